"""The spool (collector/spool.py) without processes: order, byte bound, cursor, torn and corrupt records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kerbside.collector.spool as spool_mod
from kerbside.collector.spool import Batch, Spool, SpoolFull, _encode
from kerbside.core.errors import StorageError


def batch(i: int, rp: str = "", n: int = 1) -> Batch:
    return Batch(rp, [f"m,device=d{i} v={i}i,k={j}i {i}" for j in range(n)])


def drain(s: Spool) -> list[Batch]:
    out = []
    while (b := s.peek()) is not None:
        out.append(b)
        s.pop()
    return out


def test_batches_come_back_oldest_first_across_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 200)  # a new segment every couple of records
    s = Spool(tmp_path, 1 << 20)
    sent = [batch(i, "unsynced" if i % 3 == 0 else "", n=1 + i % 4) for i in range(20)]
    for b in sent:
        s.append(b)
    assert len(s) == 20 and s.bytes == sum(len(_encode(b)) for b in sent)
    assert len(list(tmp_path.glob("*.seg"))) > 5
    assert drain(s) == sent
    assert (len(s), s.bytes, list(tmp_path.glob("*.seg"))) == (0, 0, [])


def test_the_byte_bound_is_exact_and_a_refused_append_writes_nothing(tmp_path: Path) -> None:
    b = batch(1, n=3)
    size = len(_encode(b))
    s = Spool(tmp_path, 3 * size)
    for _ in range(3):
        s.append(b)
    assert s.bytes == 3 * size and s.fill == 1.0
    seg = next(tmp_path.glob("*.seg"))
    with pytest.raises(SpoolFull, match=f"holds {3 * size} of {3 * size} bytes"):
        s.append(batch(2))
    assert seg.stat().st_size == 3 * size and len(s) == 3
    s.peek()
    s.pop()
    s.append(b)  # popping made room for exactly one more
    assert len(s) == 3


def test_an_empty_batch_round_trips(tmp_path: Path) -> None:
    s = Spool(tmp_path, 1 << 20)
    s.append(Batch("autogen", []))
    assert s.peek() == Batch("autogen", [])


def test_the_cursor_survives_a_restart_and_an_unpopped_batch_comes_again(tmp_path: Path) -> None:
    s = Spool(tmp_path, 1 << 20)
    for i in range(5):
        s.append(batch(i))
    s.peek()
    s.pop()
    assert s.peek() == batch(1)  # written to InfluxDB, then the process died before pop()
    cursor = json.loads((tmp_path / "cursor.json").read_text())
    bytes_left = s.bytes
    s.close()
    again = Spool(tmp_path, 1 << 20)  # restart: at most the one batch is re-sent, which InfluxDB overwrites
    assert json.loads((tmp_path / "cursor.json").read_text()) == cursor
    assert (len(again), again.bytes) == (4, bytes_left)
    assert drain(again) == [batch(i) for i in range(1, 5)]


def test_appends_after_a_restart_go_behind_what_was_left(tmp_path: Path) -> None:
    s = Spool(tmp_path, 1 << 20)
    s.append(batch(0))
    s.append(batch(1))
    s.peek()
    s.pop()
    s.close()
    again = Spool(tmp_path, 1 << 20)
    again.append(batch(2))
    assert drain(again) == [batch(1), batch(2)]


@pytest.mark.parametrize("torn", [b"KS", b"KSP1\x40\x00\x00\x00\x00\x00\x00\x00partial", "bad crc"])
def test_a_torn_record_at_the_tail_is_cut_off_on_open(tmp_path: Path, torn: bytes | str) -> None:
    s = Spool(tmp_path, 1 << 20)
    s.append(batch(0))
    s.append(batch(1))
    s.close()
    seg = next(tmp_path.glob("*.seg"))
    good = seg.read_bytes()
    if torn == "bad crc":
        rec = bytearray(_encode(batch(2)))
        rec[-1] ^= 0xFF  # the whole record landed but its last byte did not: the CRC does not match
        torn = bytes(rec)
    assert isinstance(torn, bytes)
    seg.write_bytes(good + torn)
    again = Spool(tmp_path, 1 << 20)
    assert seg.read_bytes() == good
    assert (len(again), again.bytes) == (2, len(good))
    again.append(batch(3))  # appended after the good records, not glued to the torn one
    assert drain(again) == [batch(0), batch(1), batch(3)]


def test_damage_before_the_tail_is_an_error_and_cuts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the last record can be torn by a crash; a bad one with acked batches behind it must not take them along."""
    monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 2 * len(_encode(batch(0))))
    s = Spool(tmp_path, 1 << 20)
    for i in range(4):
        s.append(batch(i))  # two records a segment
    s.close()
    first, last = sorted(tmp_path.glob("*.seg"))
    for seg in (last, first):
        data = bytearray(seg.read_bytes())
        data[20] ^= 0xFF  # inside the segment's first record
        seg.write_bytes(bytes(data))
        if seg == last:  # the live segment is checked on open
            with pytest.raises(StorageError, match=r"\.seg:0 is corrupt and not the last one; move the spool dir aside"):
                Spool(tmp_path, 1 << 20)
            assert seg.read_bytes() == bytes(data)
            data[20] ^= 0xFF
            seg.write_bytes(bytes(data))
    again = Spool(tmp_path, 1 << 20)  # older segments are read when replayed
    with pytest.raises(StorageError, match=r"spool record at .*\.seg:0 is corrupt"):
        again.peek()


def test_a_corrupt_cursor_says_what_to_do(tmp_path: Path) -> None:
    Spool(tmp_path, 1 << 20).append(batch(0))
    (tmp_path / "cursor.json").write_text("{")
    with pytest.raises(StorageError, match=r"cursor\.json is corrupt .*move the spool dir aside"):
        Spool(tmp_path, 1 << 20)
