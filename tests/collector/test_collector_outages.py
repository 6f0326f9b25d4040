"""InfluxDB and the broker go away during a stream and come back: nothing is lost, the spool drains."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from kc_helpers import (  # type: ignore[import-not-found]
    Publisher,
    expected_summary,
    make_config,
    make_stream,
    scrape,
    seq_summary,
    spawn,
    wait_for,
)

from influx_helpers import InfluxHTTP  # type: ignore[import-not-found]
from kerbside.collector.dlq import DeadLetters
from kerbside.devstack import Influxd, free_port
from knode import wire

pytestmark = pytest.mark.services


def _stop(proc) -> None:  # type: ignore[no-untyped-def]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_influxd_outage_spools_then_drains(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    db = Influxd("influxd", tmp_path / "influxd", free_port()).start()
    influx = InfluxHTTP(db.url, "outage")
    cfg = make_config(tmp_path, broker, db.url, "outage")
    msgs, seqs = make_stream(devices=3, total=12_000, seed=5)
    third = len(msgs) // 3
    proc = spawn(cfg, tmp_path / "collector.log")
    pub = Publisher(broker)
    try:
        pub.publish_many(msgs[:third])
        db.stop()
        pub.publish_many(msgs[third:2 * third])
        wait_for(lambda: scrape(cfg.http.port).get("kerbside_spool_batches", 0) > 0, "batches spooled", 30)
        m = scrape(cfg.http.port)
        assert m["kerbside_influx_up"] == 0
        db.start()
        pub.publish_many(msgs[2 * third:])
        wait_for(lambda: seq_summary(influx) == expected_summary(seqs), "spool drained into InfluxDB", 60)
        wait_for(lambda: scrape(cfg.http.port)["kerbside_spool_batches"] == 0, "spool empty", 30)
        m = scrape(cfg.http.port)
        assert m["kerbside_spool_bytes"] == 0
        assert m["kerbside_lines_spooled_total"] > 0
        assert m["kerbside_influx_up"] == 1
        _stop(proc)
    finally:
        pub.close()
        if proc.poll() is None:
            proc.kill()
        db.stop()
    assert not list((Path(cfg.spool.dir)).glob("*.seg"))


def test_broker_restart_loses_nothing(tmp_path: Path, broker, influx, influxd) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, broker, influxd.url, influx.db)
    msgs, seqs = make_stream(devices=3, total=12_000, seed=6)
    third = len(msgs) // 3
    log = tmp_path / "collector.log"
    proc = spawn(cfg, log)
    try:
        pub = Publisher(broker)
        pub.publish_many(msgs[:third])
        broker.stop()  # while the collector is consuming
        broker.start()
        pub.close()
        pub = Publisher(broker, client_id="test-pub-2")
        pub.publish_many(msgs[third:2 * third])
        _stop(proc)
        # With the collector away its session queues the rest; the queue must survive another restart.
        pub.publish_many(msgs[2 * third:])
        pub.close()
        broker.stop()
        broker.start()
        proc = spawn(cfg, log)
        wait_for(lambda: seq_summary(influx) == expected_summary(seqs), "every reading in InfluxDB", 60)
        _stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_full_spool_stops_acking_sigterm_exits_and_nothing_is_lost(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    db = Influxd("influxd", tmp_path / "influxd", free_port())  # not started: InfluxDB is down from the beginning
    influx = InfluxHTTP(db.url, "full")
    cfg = make_config(tmp_path, broker, db.url, "full")
    cfg.spool.max_bytes = 1 << 20
    msgs, seqs = make_stream(devices=2, total=16_000, seed=8)  # about 2.7 MB of line protocol: more than the spool
    log = tmp_path / "collector.log"
    proc = spawn(cfg, log)
    try:
        pub = Publisher(broker)
        pub.publish_many(msgs)
        pub.close()
        wait_for(lambda: scrape(cfg.http.port).get("kerbside_storage_blocked") == 1, "spool full", 30)
        m = scrape(cfg.http.port)
        assert 0 < m["kerbside_spool_bytes"] <= cfg.spool.max_bytes
        assert m["kerbside_unacked_messages"] > 0
        _stop(proc)  # stuck on a full spool and a dead InfluxDB, SIGTERM still ends it cleanly
        assert "not acking, the broker queues meanwhile" in log.read_text()
        db.start()
        proc = spawn(cfg, log)
        wait_for(lambda: seq_summary(influx) == expected_summary(seqs), "every reading after the spool drained", 60)
        wait_for(lambda: scrape(cfg.http.port)["kerbside_spool_batches"] == 0, "spool empty", 30)
        _stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        db.stop()


def test_kill9_with_data_in_the_spool_replays_it_after_restart(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    db = Influxd("influxd", tmp_path / "influxd", free_port())  # down while the stream arrives
    influx = InfluxHTTP(db.url, "crashspool")
    cfg = make_config(tmp_path, broker, db.url, "crashspool")
    msgs, seqs = make_stream(devices=2, total=6_000, seed=12)
    log = tmp_path / "collector.log"
    proc = spawn(cfg, log)
    try:
        pub = Publisher(broker)
        pub.publish_many(msgs)
        pub.close()
        wait_for(lambda: scrape(cfg.http.port).get("kerbside_unacked_messages", 1) == 0
                 and scrape(cfg.http.port).get("kerbside_spool_batches", 0) > 0, "everything acked into the spool", 30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        db.start()
        proc = spawn(cfg, log)
        wait_for(lambda: seq_summary(influx) == expected_summary(seqs), "spooled readings replayed after the crash", 60)
        _stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        db.stop()


def test_newlines_in_status_and_ack_strings_survive_a_spool_replay(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    """A node's fw or err text holding a newline or CR, spooled while InfluxDB is down (the spool joins a batch's lines
    with newlines), is stored as documented in docs/wire/README.md: each control character as its Control Picture,
    in one point; nothing is split, dead-lettered or lost."""
    db = Influxd("influxd", tmp_path / "influxd", free_port()).start()
    influx = InfluxHTTP(db.url, "ctrlchars")
    cfg = make_config(tmp_path, broker, db.url, "ctrlchars")
    readings, seqs = make_stream(devices=2, total=600, seed=21)
    dev = next(iter(seqs))
    now = int(time.time())
    fw, err = "1.4.2\nrc1\r", 'flash "ota"\r\nfailed: sha256\\mismatch\n'
    status = (wire.topic(dev, "status"), wire.encode_status({"v": 1, "id": wire.device_bytes(dev), "online": True,
                                                             "fw": fw, "t": now - 30, "synced": True}))
    ack = (wire.topic(dev, "ack"), wire.encode_status({"v": 1, "id": wire.device_bytes(dev), "cmd": 9, "ok": False,
                                                       "err": err, "t": now - 20, "synced": True}))
    half = len(readings) // 2
    proc = spawn(cfg, tmp_path / "collector.log")
    pub = Publisher(broker)
    try:
        db.stop()
        pub.publish_many(readings[:half] + [status] + readings[half:half + 3] + [ack] + readings[half + 3:])
        wait_for(lambda: scrape(cfg.http.port).get("kerbside_unacked_messages", 1) == 0
                 and scrape(cfg.http.port).get("kerbside_spool_batches", 0) > 0, "everything acked into the spool", 30)
        lines = 600 + 2
        assert scrape(cfg.http.port)["kerbside_lines_spooled_total"] == lines
        db.start()
        wait_for(lambda: scrape(cfg.http.port)["kerbside_spool_batches"] == 0, "spool replayed", 60)
        m = scrape(cfg.http.port)
        assert m["kerbside_lines_written_total"] == lines
        assert not any(k.startswith("kerbside_rejected_total") and v for k, v in m.items()), m
        _stop(proc)
    finally:
        pub.close()
        if proc.poll() is None:
            proc.kill()
    try:
        assert seq_summary(influx) == expected_summary(seqs)
        assert influx.query('SELECT "fw", "online" FROM "status"') == [
            {"name": "status", "columns": ["time", "fw", "online"], "values": [[(now - 30) * 10**9, "1.4.2␊rc1␍", True]]}]
        assert influx.query('SELECT "err", "ok", "cmd" FROM "ack"') == [
            {"name": "ack", "columns": ["time", "err", "ok", "cmd"],
             "values": [[(now - 20) * 10**9, 'flash "ota"␍␊failed: sha256\\mismatch␊', False, 9]]}]
        names = {row[0] for s in influx.query("SHOW MEASUREMENTS") for row in s["values"]}
        assert names == {"air", "status", "ack"}, "a split line would have made a measurement of its own"
        assert list(DeadLetters(cfg.dlq_dir).entries(include_replayed=True)) == []
    finally:
        db.stop()
