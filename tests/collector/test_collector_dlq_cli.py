"""`kerbside dlq list|show|replay` against a real broker and collector: a fixed cause lets dead letters through."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kc_helpers import InProcess, collector_env, make_config, mosquitto_pub, wait_for  # type: ignore[import-not-found]
from typer.testing import CliRunner

from kerbside.cli import app
from kerbside.collector.dlq import LINE_TOPIC, DeadLetters
from kerbside.core.registry import Device, Registry
from knode import wire

pytestmark = pytest.mark.services


def test_list_show_replay_after_registry_fix(tmp_path: Path, broker, influx, influxd) -> None:  # type: ignore[no-untyped-def]
    reg = tmp_path / "registry.json"
    with Registry(reg).edit() as devices:
        devices["0000000a"] = Device(id="0000000a", kit="air", site="townhall")
    cfg = make_config(tmp_path, broker, influxd.url, influx.db)
    cfg.registry.path = str(reg)
    env = collector_env(cfg)
    runner = CliRunner()
    t0 = int(time.time()) - 3600
    payload = wire.encode_readings(bytes.fromhex("0000000c"), 5, 1, True, 1, t0, 60, 6, [(6, [1, 2, 3, 4, 5, 10000])] * 3)
    store = DeadLetters(cfg.dlq_dir)
    store.add(LINE_TOPIC, "influx_rejected", "field type conflict", f"air,device=0000000a pm1=1.5 {t0 * 10**9}".encode())
    with InProcess(cfg) as col:
        mosquitto_pub(broker, wire.topic("0000000c", "readings"), payload)
        wait_for(lambda: col.metrics.get("kerbside_rejected_total", reason="unknown_device") == 1, "rejection", 10)
        wait_for(lambda: col.idle(), "flush", 10)
        r = runner.invoke(app, ["dlq", "list"], env=env)
        assert r.exit_code == 0, r.output
        assert "unknown_device: 1" in r.output and "influx_rejected: 1" in r.output
        entry = next(e for e in store.entries() if e.reason == "unknown_device")
        r = runner.invoke(app, ["dlq", "show", entry.id[:20]], env=env)
        assert r.exit_code == 0, r.output
        assert payload.hex() in r.output and "kerbside/v1/0000000c/readings" in r.output
        r = runner.invoke(app, ["dlq", "replay", "--reason", "unknown_device", "--dry-run"], env=env)
        assert "1 entries would be replayed" in r.output
        # The operator provisions the node, then replays: the collector takes it this time.
        with Registry(reg).edit() as devices:
            devices["0000000c"] = Device(id="0000000c", kit="air", site="market")
        col.devices.check_every_s = 0
        r = runner.invoke(app, ["dlq", "replay", "--reason", "unknown_device"], env=env)
        assert r.exit_code == 0, r.output
        wait_for(lambda: len(influx.points("air", "WHERE device='0000000c'")) == 3, "replayed readings", 10)
        r = runner.invoke(app, ["dlq", "replay"], env=env)  # the line entry goes straight to InfluxDB
        assert r.exit_code == 0 and "replayed 1 of 1" in r.output, r.output
    assert len(influx.points("air", "WHERE device='0000000a'")) == 1
    assert [e.reason for e in store.entries()] == []
    assert len(list(store.entries(include_replayed=True))) == 2
    r = runner.invoke(app, ["dlq", "show", "nope"], env=env)
    assert r.exit_code == 1 and "0 entries match" in r.output
