"""Faults around the disk and operators' mistakes, with real processes: mosquitto, influxd, the collector subprocess.

A small tmpfs holds the spool, the dead letters and the sequence state; it is filled while InfluxDB is down, then
while it is up, filled by the spool itself, made read-only, and freed again. Two collectors run on one client id. A
writer thread dies. Every published reading ends up in InfluxDB exactly once in effect (count, sum, min and max of
`seq` per device equal what was sent), and /healthz, sampled every 50 ms throughout, never says ok while the
collector cannot write. Each test prints `FAULT <name>: published N stored N lost 0` (run with -s to see them).

The tmpfs mounts need root (CAP_SYS_ADMIN), which `make test` has here; elsewhere those tests skip, saying so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kc_helpers import (  # type: ignore[import-not-found]
    Publisher,
    expected_summary,
    healthz,
    make_config,
    make_stream,
    mosquitto_pub,
    scrape,
    seq_summary,
    spawn,
    wait_for,
)

from influx_helpers import InfluxHTTP  # type: ignore[import-not-found]
from kerbside.collector.dlq import KEEP_BYTES, DeadLetters
from kerbside.core.settings import Config, child_env
from kerbside.devstack import Influxd, Mosquitto, free_port
from knode import wire

pytestmark = pytest.mark.services


# --- a small disk ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path`, unmounted afterwards whatever happened."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path} ({r.stderr.strip() or r.returncode}): the disk-fault tests need "
                    "root (CAP_SYS_ADMIN); `make test` runs them as root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, mode: str) -> None:
    """mount -o remount,ro|rw; a remount to ro waits out a file open for writing (the kernel says busy)."""
    deadline = time.monotonic() + 10
    while True:
        r = subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], capture_output=True, text=True)
        if r.returncode == 0:
            return
        if "busy" not in r.stderr or time.monotonic() > deadline:
            raise AssertionError(f"remount,{mode} {path}: {r.stderr}")
        time.sleep(0.05)


def fill(disk: Path, leave: int = 0) -> Path:
    """A filler file taking all but about `leave` bytes of the filesystem (delete it to free them)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while (room := os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - leave) > 0:
            try:
                os.write(fd, b"\0" * min(room, 1 << 16))
            except OSError:
                break
    finally:
        os.close(fd)
    return filler


class HealthWatch(threading.Thread):
    """Samples /healthz every 50 ms: (ok, the blocked store or None, unacked messages)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[bool, object, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            with contextlib.suppress(OSError, ValueError):
                code, doc = healthz(self.port)
                self.samples.append((code == 200 and doc["ok"], doc["storage"]["blocked"], doc["unacked"]))
            self.halt.wait(0.05)

    def stop(self) -> list[tuple[bool, object, int]]:
        self.halt.set()
        self.join(10)
        return self.samples


def never_ok_while_blocked(samples: list[tuple[bool, object, int]]) -> None:
    blocked = [s for s in samples if s[1] is not None]
    assert blocked, "the fault was never seen in /healthz"
    assert [s for s in blocked if s[0]] == [], "/healthz said ok while the collector could not write"


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def report(name: str, seqs: dict[str, list[int]], influx: InfluxHTTP) -> None:
    published = sum(len(s) for s in seqs.values())
    stored = sum(count for count, *_ in seq_summary(influx).values())
    print(f"\nFAULT {name}: published {published} stored {stored} lost {published - stored}")
    assert seq_summary(influx) == expected_summary(seqs)


def metric(port: int, name: str) -> float:
    return scrape(port).get(name, 0.0)


# --- the disk --------------------------------------------------------------------------------------------
@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    port: int
    pub: Publisher
    watch: HealthWatch

    def metric(self, name: str) -> float:
        return metric(self.port, name)

    def blocked(self) -> bool:
        return self.metric("kerbside_storage_blocked") == 1

    def settled(self) -> bool:
        """Everything received is durable and acked, and nothing blocks."""
        return self.metric("kerbside_unacked_messages") == 0 and not self.blocked()


@contextlib.contextmanager
def watched(cfg: Config, broker: Mosquitto, log: Path, fault: bool = True) -> Iterator[Run]:
    """The collector subprocess, a publisher, and /healthz sampled all along; afterwards it must never have said ok
    while it could not write (and with `fault`, it must have seen that it could not)."""
    proc = spawn(cfg, log)
    run = Run(proc, cfg.http.port, Publisher(broker), HealthWatch(cfg.http.port))
    run.watch.start()
    try:
        yield run
    finally:
        run.watch.stop()
        run.pub.close()
        if proc.poll() is None:
            proc.kill()
    if fault:
        never_ok_while_blocked(run.watch.samples)
    else:
        assert [s for s in run.watch.samples if s[1] is not None] == []


@pytest.fixture
def down(tmp_path: Path) -> Iterator[Influxd]:
    """An InfluxDB that is down until the test starts it."""
    server = Influxd("influxd", tmp_path / "influxd", free_port())
    yield server
    server.stop()


def test_a_full_disk_with_influxdb_up_blocks_acks_and_resumes_when_freed(tmp_path: Path, broker, influx, influxd) -> None:  # type: ignore[no-untyped-def]
    """InfluxDB takes the lines, but the sequence state and the dead letters must be saved before the ack."""
    with small_disk(tmp_path / "disk", "2m") as disk:
        cfg = make_config(tmp_path, broker, influxd.url, influx.db, spool__dir=str(disk / "spool"))
        msgs, seqs = make_stream(devices=3, total=6000, seed=31)
        junk = [(wire.topic("c0110000", "readings"), b"\xff junk %d" % i) for i in range(5)]
        log = tmp_path / "collector.log"
        with watched(cfg, broker, log) as run:
            filler = fill(disk)  # not a byte left
            half = len(msgs) // 2
            run.pub.publish_many(msgs[:half] + junk)
            wait_for(run.blocked, "blocked on the full disk", 30)
            code, doc = healthz(run.port)
            assert code == 503 and any("cannot be written" in p and "No space left" in p for p in doc["problems"]), doc
            assert run.metric("kerbside_unacked_messages") > 0
            run.pub.publish_many(msgs[half:])  # more arrive meanwhile: the broker keeps them
            time.sleep(2)
            assert run.proc.poll() is None and run.blocked(), "still blocked, still running"
            filler.unlink()
            wait_for(lambda: seq_summary(influx) == expected_summary(seqs), "every reading once the disk was freed", 60)
            wait_for(run.settled, "all acked", 30)
            assert healthz(run.port)[0] == 200
            stop(run.proc)
        text = log.read_text()
        assert "not acking, the broker queues meanwhile. Free space on that disk" in text and "acking resumes" in text
        assert sorted(e.payload for e in DeadLetters(cfg.dlq_dir).entries()) == sorted(p for _, p in junk)  # once each
    report("disk full, InfluxDB up", seqs, influx)


def test_sigterm_while_blocked_exits_at_once_and_a_restart_loses_nothing(tmp_path: Path, broker, influx, influxd) -> None:  # type: ignore[no-untyped-def]
    """Before, a dead writer made SIGTERM hang until the watchdog; a blocked one gives up its batch (unacked) and exits."""
    with small_disk(tmp_path / "disk", "2m") as disk:
        cfg = make_config(tmp_path, broker, influxd.url, influx.db, spool__dir=str(disk / "spool"))
        msgs, seqs = make_stream(devices=2, total=2000, seed=35)
        log = tmp_path / "collector.log"
        with watched(cfg, broker, log) as run:
            filler = fill(disk)
            run.pub.publish_many(msgs)
            wait_for(run.blocked, "blocked", 30)
            t0 = time.monotonic()
            stop(run.proc)  # exit status 0: nothing unacked is lost, the broker redelivers it
            assert time.monotonic() - t0 < 5
        assert "stopping while the state cannot be written" in log.read_text()
        filler.unlink()
        with watched(cfg, broker, log, fault=False) as run:
            wait_for(lambda: seq_summary(influx) == expected_summary(seqs), "every reading after the restart", 60)
            stop(run.proc)
    report("SIGTERM while blocked, restart", seqs, influx)


def test_a_full_disk_with_influxdb_down_stops_acks_then_spools_then_replays(tmp_path: Path, broker, down) -> None:  # type: ignore[no-untyped-def]
    influx = InfluxHTTP(down.url, "diskdown")
    with small_disk(tmp_path / "disk", "4m") as disk:
        cfg = make_config(tmp_path, broker, down.url, "diskdown", spool__dir=str(disk / "spool"), spool__max_bytes=64 << 20)
        msgs, seqs = make_stream(devices=3, total=6000, seed=32)  # about 1 MB of line protocol
        with watched(cfg, broker, tmp_path / "collector.log") as run:
            filler = fill(disk, leave=300_000)
            run.pub.publish_many(msgs)
            wait_for(run.blocked, "blocked on the full disk", 30)
            assert run.metric("kerbside_lines_spooled_total") < 6000
            assert run.metric("kerbside_storage_errors_total") > 0
            filler.unlink()
            wait_for(run.settled, "everything spooled and acked once there was room", 30)
            assert run.metric("kerbside_lines_spooled_total") == 6000  # each batch spooled once, whole
            down.start()
            wait_for(lambda: seq_summary(influx) == expected_summary(seqs), "the spool replayed", 60)
            wait_for(lambda: run.metric("kerbside_spool_batches") == 0, "spool empty", 30)
            stop(run.proc)
        assert not list((disk / "spool").glob("*.seg"))
    report("disk full, InfluxDB down", seqs, influx)


def test_a_spool_that_filled_the_disk_makes_room_by_replaying(tmp_path: Path, broker, down) -> None:  # type: ignore[no-untyped-def]
    """Nothing is freed by anyone: once InfluxDB is back, replay (an in-place cursor, segments deleted) makes room."""
    influx = InfluxHTTP(down.url, "spoolfill")
    with small_disk(tmp_path / "disk", "1536k") as disk:
        cfg = make_config(tmp_path, broker, down.url, "spoolfill", spool__dir=str(disk / "spool"), spool__max_bytes=4 << 20)
        msgs, seqs = make_stream(devices=3, total=12_000, seed=33)  # about 2 MB: more than the disk
        log = tmp_path / "collector.log"
        with watched(cfg, broker, log) as run:
            run.pub.publish_many(msgs)
            wait_for(run.blocked, "the spool filled the disk", 30)
            assert run.metric("kerbside_spool_bytes") < 1536 << 10
            down.start()
            wait_for(lambda: seq_summary(influx) == expected_summary(seqs), "every reading", 90)
            wait_for(lambda: run.metric("kerbside_spool_batches") == 0 and run.settled(), "spool empty, unblocked", 30)
            stop(run.proc)
        assert "acking resumes" in log.read_text()
    report("spool fills the disk, InfluxDB back", seqs, influx)


def test_a_read_only_disk_blocks_acks_and_resumes_when_writable(tmp_path: Path, broker, down) -> None:  # type: ignore[no-untyped-def]
    influx = InfluxHTTP(down.url, "readonly")
    with small_disk(tmp_path / "disk", "4m") as disk:
        cfg = make_config(tmp_path, broker, down.url, "readonly", spool__dir=str(disk / "spool"))
        msgs, seqs = make_stream(devices=3, total=3000, seed=34)
        log = tmp_path / "collector.log"
        with watched(cfg, broker, log) as run:
            remount(disk, "ro")  # as the kernel does after disk errors (errors=remount-ro)
            try:
                run.pub.publish_many(msgs)
                wait_for(run.blocked, "blocked on the read-only disk", 30)
                code, doc = healthz(run.port)
                assert code == 503 and any("Read-only file system" in p for p in doc["problems"]), doc
                time.sleep(1.5)
            finally:
                remount(disk, "rw")
            wait_for(run.settled, "spooled once writable", 30)
            down.start()
            wait_for(lambda: seq_summary(influx) == expected_summary(seqs), "the spool replayed", 60)
            stop(run.proc)
        assert "The filesystem is read-only" in log.read_text()
    report("disk read-only, InfluxDB down", seqs, influx)


# --- threads ---------------------------------------------------------------------------------------------
LAUNCHER = """
import sys
from kerbside.collector.service import Collector

calls = []
def broken(self):
    calls.append(1)
    if len(calls) > 5:
        raise RuntimeError("injected: a bug in the writer's idle path")

Collector._idle_replay = broken
from kerbside.cli import main
sys.argv = ["kerbside", "collect"]
main()
"""


def test_a_writer_thread_that_dies_ends_the_process_with_status_1(tmp_path: Path, broker, influx, influxd) -> None:  # type: ignore[no-untyped-def]
    """Before: the writer died, the process stayed up saying ok, and nothing was ingested any more."""
    cfg = make_config(tmp_path, broker, influxd.url, influx.db)
    log = tmp_path / "collector.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], env=child_env(cfg), stdout=out, stderr=subprocess.STDOUT)
    try:
        assert proc.wait(30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "thread writer failed (RuntimeError: injected: a bug in the writer's idle path)" in text
    assert "Traceback" in text and "the collector stopped after an internal error" in text


# --- the broker ------------------------------------------------------------------------------------------
def test_two_collectors_on_one_client_id_say_so_and_record_no_false_gaps(tmp_path: Path, broker, influx, influxd) -> None:  # type: ignore[no-untyped-def]
    a = make_config(tmp_path / "a", broker, influxd.url, influx.db, mqtt__client_id="kc-shared")
    b = make_config(tmp_path / "b", broker, influxd.url, influx.db, mqtt__client_id="kc-shared")
    msgs, seqs = make_stream(devices=10, total=12_000, seed=41, per_msg=(5, 10))
    pa = spawn(a, tmp_path / "a.log")
    pub = Publisher(broker)
    pb = None
    try:
        pub.publish_many(msgs[:100])
        pb = spawn(b, tmp_path / "b.log")  # takes the session from a
        sent = 100
        deadline = time.monotonic() + 60
        while not all(metric(c.http.port, "kerbside_mqtt_client_id_conflict") == 1 for c in (a, b)):
            assert time.monotonic() < deadline, "no conflict reported"
            if sent < len(msgs):
                pub.publish_many(msgs[sent:sent + 20])
                sent += 20
            time.sleep(0.1)
        for c in (a, b):
            code, doc = healthz(c.http.port)
            assert code == 503 and any("another client uses client_id 'kc-shared'" in p for p in doc["problems"]), doc
            assert metric(c.http.port, "kerbside_mqtt_takeovers_total") >= 3
        pub.publish_many(msgs[sent:])
        stop(pb)  # the operator stops the second one
        wait_for(lambda: seq_summary(influx) == expected_summary(seqs), "every reading, from one or the other", 120)
        stop(pa)
    finally:
        pub.close()
        for p in (pa, pb):
            if p is not None and p.poll() is None:
                p.kill()
    for name in ("a.log", "b.log"):
        assert "CLIENT ID CONFLICT" in (tmp_path / name).read_text()
    assert influx.query('SELECT * FROM "kerbside_gaps"') == [], "each saw part of the stream: that is no gap"
    report("two collectors, one client id", seqs, influx)


def test_retained_status_is_taken_once_not_at_every_restart(tmp_path: Path, broker, influx, influxd) -> None:  # type: ignore[no-untyped-def]
    """A will has no node time: taken again at each restart it added a point, and a bad one a dead letter."""
    cfg = make_config(tmp_path, broker, influxd.url, influx.db)
    will = wire.encode_status({"v": 1, "id": bytes.fromhex("000000a1"), "online": False})
    bad = wire.encode_status({"v": 1, "id": bytes.fromhex("000000a2"), "online": "yes"})
    mosquitto_pub(broker, wire.topic("000000a1", "status"), will, retain=True)
    mosquitto_pub(broker, wire.topic("000000a2", "status"), bad, retain=True)
    log = tmp_path / "collector.log"
    for _ in range(3):  # a fresh session, then two restarts with the session kept
        proc = spawn(cfg, log)
        try:
            wait_for(lambda: healthz(cfg.http.port)[1]["devices"]["offline"] == ["000000a1"], "the online view", 15)
            wait_for(lambda: len(influx.points("status")) == 1 and len(list(DeadLetters(cfg.dlq_dir).entries())) == 1,
                     "one point, one dead letter", 15)
            wait_for(lambda: metric(cfg.http.port, "kerbside_unacked_messages") == 0, "acked", 15)
            stop(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert len(influx.points("status")) == 1 and len(list(DeadLetters(cfg.dlq_dir).entries())) == 1


def test_what_the_broker_refuses_is_counted_and_oversize_junk_costs_a_few_kb(tmp_path: Path, influx, influxd) -> None:  # type: ignore[no-untyped-def]
    """With log_dest topic the collector reads what Mosquitto refuses; what it lets through is dead-lettered small."""
    broker = Mosquitto("mosquitto", tmp_path / "broker", free_port(),
                       extra="log_dest topic\nmax_packet_size 65536\n").start()  # the last value wins
    cfg = make_config(tmp_path, broker, influxd.url, influx.db)
    log = tmp_path / "collector.log"
    proc = spawn(cfg, log)
    try:
        mosquitto_pub(broker, wire.topic("00c0ffee", "readings"), b"\x01" * 20_000)  # past the contract, under the limit
        wait_for(lambda: metric(cfg.http.port, 'kerbside_rejected_total{reason="oversize"}') == 1
                 and metric(cfg.http.port, "kerbside_unacked_messages") == 0, "dead-lettered", 15)
        [e] = list(DeadLetters(cfg.dlq_dir).entries())
        assert (e.size, len(e.payload), e.truncated) == (20_000, KEEP_BYTES, True)
        big = tmp_path / "big.bin"
        big.write_bytes(b"\x02" * 100_000)
        r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-i", "00c0ffee",
                            "-t", wire.topic("00c0ffee", "readings"), "-f", str(big)], capture_output=True, timeout=10)
        assert r.returncode != 0  # the broker closed the publisher's connection
        wait_for(lambda: metric(cfg.http.port, 'kerbside_broker_refused_total{reason="oversize"}') == 1, "counted", 15)
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.stop()
    assert "the broker refused a message from 00c0ffee (oversize" in log.read_text()


def test_a_50_mb_junk_message_costs_the_dead_letters_a_few_kb(tmp_path: Path, influx, influxd) -> None:  # type: ignore[no-untyped-def]
    broker = Mosquitto("mosquitto", tmp_path / "broker", free_port(), extra="max_packet_size 100000000\n").start()
    cfg = make_config(tmp_path, broker, influxd.url, influx.db)
    proc = spawn(cfg, tmp_path / "collector.log")
    try:
        junk = tmp_path / "junk.bin"
        junk.write_bytes(os.urandom(50_000_000))
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                        "-t", wire.topic("00c0ffee", "readings"), "-f", str(junk)], check=True, timeout=60)
        wait_for(lambda: metric(cfg.http.port, 'kerbside_rejected_total{reason="oversize"}') == 1
                 and metric(cfg.http.port, "kerbside_unacked_messages") == 0, "dead-lettered and acked", 60)
        size = sum(p.stat().st_size for p in cfg.dlq_dir.glob("*.jsonl"))
        print(f"\nFAULT 50 MB junk message: dead-letter store {size} bytes")
        assert size < 3500
        assert metric(cfg.http.port, "kerbside_dlq_bytes") == size
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.stop()
