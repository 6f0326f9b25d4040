"""Operator signals without processes: /healthz's checks, session takeovers, the broker's log, thread deaths."""

from __future__ import annotations

import errno
import logging
import threading
from pathlib import Path

import pytest

from kerbside.collector import brokerlog
from kerbside.collector.health import Health
from kerbside.collector.service import Collector
from kerbside.collector.session import CONFLICT_AFTER, SESSION_TAKEN_OVER, WINDOW_S, SessionWatch
from kerbside.collector.spool import SpoolFull
from kerbside.core.settings import Config

LOST = 128  # what paho reports when the broker closes the connection without a DISCONNECT (Mosquitto < 2.0.15)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_health_is_ok_only_without_problems_and_lists_each() -> None:
    h = Health()
    state = {"disk": True}
    h.add("disk", lambda: {"ok": state["disk"], "free": 1} | ({} if state["disk"] else {"problem": "the disk is full"}))
    h.add("devices", lambda: {"online": ["a"]})  # informs only
    h.add("count", lambda: 3)
    assert h.report() == (True, {"ok": True, "problems": [], "disk": {"ok": True, "free": 1}, "devices": {"online": ["a"]},
                                 "count": 3})
    state["disk"] = False
    ok, doc = h.report()
    assert (ok, doc["ok"], doc["problems"]) == (False, False, ["the disk is full"])


def test_a_check_that_raises_is_a_problem_not_a_pass() -> None:
    h = Health()
    h.add("broken", lambda: 1 / 0)
    ok, doc = h.report()
    assert not ok and doc["problems"] == ["broken: the health check itself failed (ZeroDivisionError: division by zero)"]
    with pytest.raises(ValueError, match="taken"):
        h.add("broken", dict)
    with pytest.raises(ValueError, match="taken"):
        h.add("ok", dict)


def test_session_taken_over_0x8e_is_a_conflict_at_once() -> None:
    clock = Clock()
    w = SessionWatch(clock)
    assert (w.partial, w.conflict, w.backoff_s()) == (False, False, 1)
    assert w.disconnected(SESSION_TAKEN_OVER) is True
    assert (w.partial, w.conflict, w.total) == (True, True, 1)
    assert w.connected() is False  # already counted
    clock.t += WINDOW_S + 1
    assert (w.partial, w.conflict, w.backoff_s()) == (False, False, 1)


def test_closed_and_taken_back_at_once_is_a_suspected_takeover_and_three_are_a_conflict() -> None:
    clock = Clock()
    w = SessionWatch(clock)
    for n in range(1, CONFLICT_AFTER + 1):
        assert w.disconnected(LOST) is False
        clock.t += 1
        assert w.connected() is True
        assert (w.recent(), w.partial, w.conflict) == (n, True, n >= CONFLICT_AFTER)
        assert w.backoff_s() == 2 ** (n - 1)
        clock.t += 5
    clock.t += WINDOW_S
    assert (w.recent(), w.partial, w.conflict, w.total) == (0, False, False, CONFLICT_AFTER)


def test_a_broker_that_went_away_is_no_takeover() -> None:
    w = SessionWatch(Clock())
    w.disconnected(LOST)
    w.connect_failed()  # the broker restarting: the first attempt is refused
    assert w.connected() is False
    assert w.connected() is False  # a first connect is no takeover either
    assert (w.total, w.partial) == (0, False)


def test_the_reconnect_delay_doubles_with_takeovers_up_to_a_minute() -> None:
    clock = Clock()
    w = SessionWatch(clock)
    delays = []
    for _ in range(9):
        w.disconnected(SESSION_TAKEN_OVER)
        delays.append(w.backoff_s())
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_the_broker_log_names_who_sent_an_oversize_packet() -> None:
    assert brokerlog.refusal("1795968777: Client 00c0ffee disconnected due to oversize packet.") == ("oversize", "00c0ffee")
    assert brokerlog.refusal("1795968777: Client 00c0ffee disconnected.") is None
    assert brokerlog.refusal("1795968777: New client connected from 127.0.0.1:51664 as 00c0ffee (p2, c1, k60).") is None


@pytest.fixture
def collector(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = Config()
    cfg.spool.dir = str(tmp_path / "spool")
    cfg.influx.url = "http://127.0.0.1:9"  # nothing listens
    col = Collector(cfg)
    yield col
    col.spool.close()
    col.writer.close()


def test_a_collector_that_does_not_run_is_not_healthy(collector: Collector) -> None:
    ok, doc = collector.health()
    assert not ok and doc["threads"]["ok"] is False and "not running" in doc["problems"]


def test_a_blocked_store_fails_health_says_why_and_clears_when_written(collector: Collector,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="kerbside.collector"):
        collector._block("state", OSError(errno.ENOSPC, "No space left on device", "/var/lib/kerbside/state/x"))
        collector._block("state", OSError(errno.ENOSPC, "No space left on device", "/var/lib/kerbside/state/x"))
    assert len(caplog.records) == 1, "logged once, not at every retry"
    assert "not acking, the broker queues meanwhile. Free space on that disk; it resumes by itself" in caplog.text
    _, doc = collector.health()
    assert doc["storage"]["ok"] is False and doc["storage"]["blocked"]["store"] == "state"
    assert "not acking: the state cannot be written (state: No space left on device" in " ".join(doc["problems"])
    got = collector.metrics
    assert (got.get("kerbside_storage_blocked"), got.get("kerbside_storage_errors_total", store="state")) == (1, 2)
    collector._block("spool", SpoolFull("spool /s holds 9 of 9 bytes (spool.max_bytes)"))
    assert collector.health()[1]["storage"]["blocked"]["error"] == "spool /s holds 9 of 9 bytes (spool.max_bytes)"
    assert got.get("kerbside_storage_errors_total", store="spool") == 0, "a budget is not a disk error"
    collector._unblock()
    assert collector.health()[1]["storage"] == {"ok": True, "blocked": None}
    assert got.get("kerbside_storage_blocked") == 0


def test_a_thread_that_dies_is_logged_counted_and_fails_health(collector: Collector,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> None:
        raise RuntimeError("a bug")

    collector._running = True
    t = threading.Thread(target=collector._guard("writer", boom))
    collector._threads["writer"] = t
    with caplog.at_level(logging.ERROR, logger="kerbside.collector"):
        t.start()
        t.join()
    assert collector.failed and collector.stopping.is_set()
    assert collector.metrics.get("kerbside_internal_errors_total") == 1
    assert "thread writer failed (RuntimeError: a bug)" in caplog.text and "Traceback" in caplog.text
    ok, doc = collector.health()
    assert not ok and doc["threads"] == {"ok": False, "writer": False, "failure": "thread writer failed: RuntimeError: a bug",
                                         "problem": "thread writer failed: RuntimeError: a bug"}


def test_a_callback_that_raises_stops_the_collector_instead_of_paho(collector: Collector) -> None:
    def bad(*args: object) -> None:
        raise KeyError("x")

    collector.source._callback("on_message", bad)(None, None, None)  # returns: paho's thread lives on
    assert collector.failure == "MQTT callback on_message failed: KeyError: 'x'"


def test_without_a_registry_fake_ids_make_no_series_per_device(collector: Collector) -> None:
    """Any id is accepted without registry.path: 10 000 fake ones must not make 10 000 series, only two counts."""
    from kerbside.collector.service import Incoming
    from kerbside.devstack import parse_metrics
    from knode import wire

    for i in range(10_000):
        dev = f"{i:08x}"
        payload = wire.encode_status({"v": 1, "id": bytes.fromhex(dev), "online": i % 4 != 0})
        collector.handle(Incoming(wire.topic(dev, "status"), payload, mid=1, qos=1, generation=-1, received=0.0))
    text = collector.render_metrics().decode()
    got = parse_metrics(text)
    assert (got["kerbside_devices_online"], got["kerbside_devices_offline"]) == (7500, 2500)
    assert len(text.splitlines()) < 200


def test_with_a_registry_each_registered_device_has_its_series(tmp_path: Path) -> None:
    from kerbside.collector.service import Incoming
    from kerbside.core.registry import Device, Registry
    from kerbside.devstack import parse_metrics
    from knode import wire

    reg = tmp_path / "registry.json"
    with Registry(reg).edit() as devices:
        devices["000000a1"] = Device(id="000000a1", kit="air", site="townhall")
    cfg = Config()
    cfg.spool.dir = str(tmp_path / "spool")
    cfg.registry.path = str(reg)
    col = Collector(cfg)
    try:
        payload = wire.encode_status({"v": 1, "id": bytes.fromhex("000000a1"), "online": True})
        col.handle(Incoming(wire.topic("000000a1", "status"), payload, mid=1, qos=1, generation=-1, received=0.0))
        assert parse_metrics(col.render_metrics().decode())['kerbside_device_online{device="000000a1"}'] == 1
    finally:
        col.spool.close()
        col.writer.close()


def test_budgets_that_the_disk_cannot_hold_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from kerbside.collector import storage

    monkeypatch.setattr(storage.os, "statvfs", lambda path: SimpleNamespace(f_bavail=1000, f_frsize=4096))
    free = 4_096_000
    assert storage.free_bytes(tmp_path / "not" / "made" / "yet") == free  # asks the nearest existing parent
    assert storage.room_warnings([("spool", tmp_path / "spool", free + 500, 500)]) == []  # what is used is no claim
    [warning] = storage.room_warnings([("spool", tmp_path / "spool", free, 0), ("dead letters", tmp_path / "dlq", 1, 0)])
    assert warning.startswith(f"the filesystem holding spool ({tmp_path / 'spool'}), dead letters ({tmp_path / 'dlq'}) "
                              f"has {free} bytes free but their budgets may still take {free + 1}")
