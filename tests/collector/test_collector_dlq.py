"""The dead-letter store without processes: oversize payloads, the byte budget, durable appends, streamed reading."""

from __future__ import annotations

import errno
import hashlib
import os
import time
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kerbside.cli import app
from kerbside.collector.dlq import KEEP_BYTES, DeadLetters, DlqFull
from kerbside.collector.service import Collector, Incoming
from kerbside.core.contract import MAX_PAYLOAD
from kerbside.core.settings import Config

TOPIC = "kerbside/v1/00c0ffee/readings"


def test_an_oversize_payload_keeps_its_start_size_and_hash_not_the_whole(tmp_path: Path) -> None:
    junk = os.urandom(50_000_000)
    store = DeadLetters(tmp_path)
    entry_id = store.add(TOPIC, "oversize", f"{len(junk)} bytes", junk)
    size = sum(p.stat().st_size for p in tmp_path.glob("*.jsonl"))
    assert size < 3500, f"{size} bytes on disk for one 50 MB message"
    e = store.get(entry_id)
    assert (e.size, e.sha256, e.payload, e.truncated) == (len(junk), hashlib.sha256(junk).hexdigest(), junk[:KEEP_BYTES], True)


def test_a_payload_the_contract_allows_is_kept_whole(tmp_path: Path) -> None:
    payload = os.urandom(MAX_PAYLOAD)
    store = DeadLetters(tmp_path)
    e = store.get(store.add(TOPIC, "cbor_malformed", "", payload))
    assert (e.payload, e.size, e.truncated) == (payload, MAX_PAYLOAD, False)


def test_the_collector_dead_letters_a_50_mb_message_in_a_few_kb(tmp_path: Path) -> None:
    cfg = Config()
    cfg.spool.dir = str(tmp_path / "spool")
    col = Collector(cfg)  # not run: handle() and flush() in this thread, nothing connects
    try:
        col.handle(Incoming(TOPIC, b"\xa0" * 50_000_000, mid=1, qos=1, generation=-1, received=0.0))
        assert col.flush()
        [e] = list(DeadLetters(cfg.dlq_dir).entries())
        assert (e.reason, e.size, len(e.payload)) == ("oversize", 50_000_000, KEEP_BYTES)
        assert col.dlq.bytes == sum(p.stat().st_size for p in cfg.dlq_dir.glob("*.jsonl")) < 3500
    finally:
        col.spool.close()
        col.writer.close()


def test_the_budget_is_checked_before_writing_and_moving_files_away_makes_room(tmp_path: Path) -> None:
    store = DeadLetters(tmp_path, max_bytes=20_000)
    day = time.mktime((2026, 3, 1, 12, 0, 0, 0, 0, 0))
    while True:
        try:
            store.add_many([(TOPIC, "cbor_malformed", "", b"x" * 2000)], day)
        except DlqFull as e:
            assert "holds" in str(e) and "dlq.max_bytes" in str(e)
            break
    files = list(tmp_path.glob("*.jsonl"))
    assert store.bytes == sum(p.stat().st_size for p in files) <= 20_000
    before = files[0].read_bytes()
    with pytest.raises(DlqFull):
        store.add_many([(TOPIC, "cbor_malformed", "", b"y" * 2000)], day)
    assert files[0].read_bytes() == before, "a refused add writes nothing"
    files[0].rename(tmp_path.parent / "archived.jsonl")  # the operator moves the old day away
    store.add_many([(TOPIC, "cbor_malformed", "", b"z" * 2000)], day)  # measured again before refusing


def test_a_write_the_disk_refuses_is_cut_off_and_the_next_entry_is_whole(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = DeadLetters(tmp_path)
    first = store.add(TOPIC, "bad_structure", "", b"a")
    real_write = os.write
    left = {"room": 100}

    def nearly_full(fd: int, data: bytes) -> int:
        if left["room"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(data[:left["room"]]))
        left["room"] -= n
        return n

    monkeypatch.setattr(os, "write", nearly_full)
    with pytest.raises(OSError):
        store.add(TOPIC, "bad_structure", "", b"b" * 500)
    monkeypatch.undo()
    third = store.add(TOPIC, "bad_structure", "", b"c")
    assert [e.id for e in DeadLetters(tmp_path).entries()] == [first, third]


def test_a_line_torn_by_a_crash_is_cut_before_the_next_append(tmp_path: Path) -> None:
    store = DeadLetters(tmp_path)
    first = store.add(TOPIC, "bad_structure", "", b"a")
    day = next(tmp_path.glob("*.jsonl"))
    with open(day, "ab") as f:
        f.write(b'{"id":"torn","payl')  # the process died mid-append: never acked
    again = DeadLetters(tmp_path)  # a restart
    second = again.add(TOPIC, "bad_structure", "", b"b")
    assert [e.id for e in again.entries()] == [first, second]


def test_reading_streams_one_entry_at_a_time(tmp_path: Path) -> None:
    store = DeadLetters(tmp_path)
    payload = os.urandom(MAX_PAYLOAD)
    for _ in range(20):
        ids = store.add_many([(TOPIC, "cbor_malformed", "", payload)] * 50)  # 1000 entries, about 11 MB
    tracemalloc.start()
    try:
        assert sum(1 for _ in store.entries()) == 1000
        assert store.get(ids[-1]).payload == payload
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"reading an 11 MB store took {peak} bytes at its peak"


def test_dlq_list_takes_the_collectors_spool_flag(tmp_path: Path) -> None:
    spool = tmp_path / "elsewhere" / "spool"
    DeadLetters(spool.parent / "dlq").add(TOPIC, "unknown_device", "00c0ffee is not in the registry", b"\xa0")
    runner = CliRunner()
    r = runner.invoke(app, ["dlq", "list", "--spool", str(spool)])
    assert r.exit_code == 0, r.output
    assert "1 entries in" in r.output and "unknown_device: 1" in r.output
    r = runner.invoke(app, ["dlq", "list"], env={"KERBSIDE_SPOOL_DIR": str(tmp_path / "default" / "spool")})
    assert r.exit_code == 0 and "0 entries in" in r.output
    assert "there is no dead-letter store at" in r.output and "--spool DIR" in r.output  # not a silent 0
    entry = next(DeadLetters(spool.parent / "dlq").entries())
    r = runner.invoke(app, ["dlq", "show", entry.id, "--spool", str(spool)])
    assert r.exit_code == 0 and "unknown_device" in r.output and "sha256" in r.output, r.output


def test_dlq_show_says_an_oversize_payload_was_cut(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    junk = b"\xff" * 100_000
    entry_id = DeadLetters(tmp_path / "dlq").add(TOPIC, "oversize", "100000 bytes", junk)
    r = CliRunner().invoke(app, ["dlq", "show", entry_id, "--spool", str(spool)])
    assert r.exit_code == 0, r.output
    assert f"100000 bytes, sha256 {hashlib.sha256(junk).hexdigest()}; the first {KEEP_BYTES} kept" in r.output
    assert "cannot be replayed" in r.output
