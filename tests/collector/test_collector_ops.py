"""Operator-facing behaviour: retained status and last wills in the online view, /healthz, shared subscriptions, JSON logs."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from kc_helpers import (  # type: ignore[import-not-found]
    InProcess,
    Publisher,
    expected_summary,
    healthz,
    make_config,
    make_stream,
    scrape,
    seq_summary,
    wait_for,
)

from kerbside.collector.logs import JsonFormatter
from knode import wire

pytestmark = pytest.mark.services


def _status(dev: str, online: bool, dt: int = 0) -> bytes:
    t = int(time.time()) - 10 + dt
    return wire.encode_status({"v": 1, "id": bytes.fromhex(dev), "online": online, "t": t, "synced": True})


def test_retained_status_and_last_will_drive_online_view(tmp_path: Path, broker, influx, influxd) -> None:  # type: ignore[no-untyped-def]
    pub = Publisher(broker)
    # Published (retained) before the collector ever ran: it learns the fleet's state on subscribe.
    pub.publish_many([(wire.topic("000000a1", "status"), _status("000000a1", True)),
                      (wire.topic("000000a2", "status"), _status("000000a2", False))], retain=True)
    cfg = make_config(tmp_path, broker, influxd.url, influx.db)
    with InProcess(cfg) as col:
        wait_for(lambda: len(col.online) == 2, "retained statuses", 10)
        code, health = healthz(cfg.http.port)
        assert code == 200 and health["ok"] is True
        assert health["devices"] == {"online": ["000000a1"], "offline": ["000000a2"]}
        assert health["mqtt"]["connected"] and health["influx"]["reachable"]
        assert health["spool"]["batches"] == 0
        # The node's last will fires: it goes offline.
        pub.publish_many([(wire.topic("000000a1", "status"), _status("000000a1", False, dt=5))], retain=True)
        wait_for(lambda: scrape(cfg.http.port).get("kerbside_devices_offline") == 2, "offline", 10)
        m = scrape(cfg.http.port)
        assert m["kerbside_devices_online"] == 0
        assert not any(k.startswith("kerbside_device_online") for k in m), "no series per device without a registry"
        wait_for(lambda: len(influx.points("status")) == 3, "status points", 10)
    pub.close()


def test_healthz_reports_influx_unreachable(tmp_path: Path, broker, influx) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, broker, "http://127.0.0.1:9", influx.db)
    with InProcess(cfg):
        code, health = healthz(cfg.http.port)
    assert code == 503
    assert health["ok"] is False and health["influx"]["reachable"] is False and health["mqtt"]["connected"] is True


def test_shared_subscription_splits_load_and_loses_nothing(tmp_path: Path, broker, influx, influxd) -> None:  # type: ignore[no-untyped-def]
    msgs, seqs = make_stream(devices=4, total=8000, seed=9, per_msg=(5, 10))
    a = make_config(tmp_path / "a", broker, influxd.url, influx.db, mqtt__group="collectors", mqtt__client_id="kc-a")
    b = make_config(tmp_path / "b", broker, influxd.url, influx.db, mqtt__group="collectors", mqtt__client_id="kc-b")
    assert InProcess(a).collector.source.topics()[0] == "$share/collectors/kerbside/v1/+/readings"
    with InProcess(a) as ca, InProcess(b) as cb:
        pub = Publisher(broker)
        pub.publish_many(msgs)
        pub.close()
        wait_for(lambda: seq_summary(influx) == expected_summary(seqs), "every reading", 30)
        got_a, got_b = (c.metrics.get("kerbside_messages_total", kind="readings") for c in (ca, cb))
    assert got_a > 0 and got_b > 0
    assert got_a + got_b >= len(msgs)


def test_json_log_lines_are_json() -> None:
    rec = logging.LogRecord("kerbside.collector", logging.WARNING, __file__, 1, "spool at %d%%", (80,), None)
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["level"] == "warning" and doc["msg"] == "spool at 80%" and doc["logger"] == "kerbside.collector"
    assert doc["ts"].endswith("Z")
