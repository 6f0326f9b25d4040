"""The spool (collector/spool.py) without processes: order, byte bound, cursor, torn and corrupt records."""

from __future__ import annotations

import errno
import json
import os
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
    cursor = (tmp_path / "cursor").read_bytes()
    bytes_left = s.bytes
    s.close()
    again = Spool(tmp_path, 1 << 20)  # restart: at most the one batch is re-sent, which InfluxDB overwrites
    assert (tmp_path / "cursor").read_bytes() == cursor
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
def test_a_torn_record_at_the_tail_is_ignored_on_open_and_cut_by_the_next_append(tmp_path: Path, torn: bytes | str) -> None:
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
    assert seg.read_bytes() == good + torn, "opening writes nothing: a full or read-only disk must not stop a restart"
    assert (len(again), again.bytes) == (2, len(good))
    assert again.peek(max_lines=100) == Batch("", batch(0).lines + batch(1).lines)  # replay stops before the torn bytes
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
    (tmp_path / "cursor").write_bytes(b"\0" * 64)
    with pytest.raises(StorageError, match=r"cursor is corrupt .*move the spool dir aside"):
        Spool(tmp_path, 1 << 20)


def test_a_torn_cursor_update_leaves_the_previous_cursor(tmp_path: Path) -> None:
    """The cursor is two slots overwritten in turn: a crash mid-update loses at most that update."""
    s = Spool(tmp_path, 1 << 20)
    for i in range(4):
        s.append(batch(i))
    s.peek()
    s.pop()  # cursor past batch 0
    before = (tmp_path / "cursor").read_bytes()
    s.peek()
    s.pop()  # cursor past batch 1, in the other slot
    s.close()
    after = (tmp_path / "cursor").read_bytes()
    changed = [i for i in range(0, 64, 32) if before[i:i + 32] != after[i:i + 32]]
    assert len(changed) == 1, "one update writes one slot"
    torn = bytearray(after)
    torn[changed[0] + 20] ^= 0xFF  # that slot half written
    (tmp_path / "cursor").write_bytes(bytes(torn))
    assert drain(Spool(tmp_path, 1 << 20)) == [batch(1), batch(2), batch(3)]  # batch 1 once more: InfluxDB overwrites it


def test_a_cursor_json_from_an_earlier_version_is_read_and_replaced(tmp_path: Path) -> None:
    s = Spool(tmp_path, 1 << 20)
    for i in range(3):
        s.append(batch(i))
    s.close()
    seg = next(tmp_path.glob("*.seg"))
    (tmp_path / "cursor").unlink()
    (tmp_path / "cursor.json").write_text(json.dumps({"segment": int(seg.stem), "offset": len(_encode(batch(0)))}))
    again = Spool(tmp_path, 1 << 20)
    assert len(again) == 2
    assert again.peek() == batch(1)
    again.pop()
    assert (tmp_path / "cursor").exists() and not (tmp_path / "cursor.json").exists()
    again.close()
    assert drain(Spool(tmp_path, 1 << 20)) == [batch(2)]


def test_replay_merges_batches_of_one_policy_up_to_max_lines(tmp_path: Path) -> None:
    s = Spool(tmp_path, 1 << 20)
    sent = [batch(i, n=3) for i in range(10)] + [batch(10, "unsynced", n=2), batch(11, n=1)]
    for b in sent:
        s.append(b)
    first = s.peek(max_lines=10)
    assert first == Batch("", [line for b in sent[:3] for line in b.lines])  # 9 lines; a 4th batch would make 12
    s.close()
    again = Spool(tmp_path, 1 << 20)  # not popped: the same merged batch comes again after a crash
    assert again.peek(max_lines=10) == first
    again.pop()
    assert len(again) == 9
    assert again.peek(max_lines=1000) == Batch("", [line for b in sent[3:10] for line in b.lines])
    again.pop()
    assert again.peek(max_lines=1000) == sent[10]  # another retention policy: a write of its own
    again.pop()
    assert again.peek(max_lines=1) == sent[11]
    again.pop()
    assert (len(again), again.bytes, again.peek(1000)) == (0, 0, None)


def test_a_batch_larger_than_max_lines_is_replayed_whole(tmp_path: Path) -> None:
    s = Spool(tmp_path, 1 << 20)
    s.append(batch(0, n=50))
    s.append(batch(1, n=1))
    assert s.peek(max_lines=10) == batch(0, n=50)


def test_replayed_segments_are_deleted_as_replay_passes_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 2 * len(_encode(batch(0))))
    s = Spool(tmp_path, 1 << 20)
    for i in range(6):
        s.append(batch(i))
    assert len(list(tmp_path.glob("*.seg"))) == 3
    for expected in (3, 2):
        s.peek()
        s.pop()
        s.peek()
        s.pop()
        s.peek()  # moves past the replayed segment
        assert len(list(tmp_path.glob("*.seg"))) == expected - 1
    assert drain(s) == [batch(4), batch(5)]


def test_replay_needs_no_new_disk_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a full disk nothing new can be created; the cursor is updated in place, so replay still frees space."""
    s = Spool(tmp_path, 1 << 20)
    for i in range(5):
        s.append(batch(i))
    real_open = os.open

    def no_new_files(path, flags, *args):  # type: ignore[no-untyped-def]
        if flags & os.O_CREAT and not os.path.exists(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_new_files)
    monkeypatch.setattr(spool_mod, "atomic_write", None, raising=False)  # nothing may replace a file either
    assert drain(s) == [batch(i) for i in range(5)]
    assert not list(tmp_path.glob("*.seg"))


class _Disk:
    """os.write and os.fsync as a nearly full disk does them: short writes, then ENOSPC or EIO."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, room: int, short: int = 4096, fail: int = errno.ENOSPC) -> None:
        self.room, self.short, self.fail = room, short, fail
        self.fsync_error: int | None = None
        self._write, self._fsync = os.write, os.fsync
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "fsync", self.fsync)

    def write(self, fd: int, data: bytes) -> int:
        if self.room <= 0:
            raise OSError(self.fail, os.strerror(self.fail))
        n = self._write(fd, bytes(data[:min(len(data), self.short, self.room)]))
        self.room -= n
        return n

    def fsync(self, fd: int) -> None:
        if self.fsync_error is not None:
            raise OSError(self.fsync_error, os.strerror(self.fsync_error))
        self._fsync(fd)


def test_short_writes_are_continued_until_the_record_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Spool(tmp_path, 1 << 20)
    big = batch(0, n=400)  # about 19 kB, written 4 kB at a time as the 64 kB tmpfs did
    _Disk(monkeypatch, room=1 << 30)
    s.append(big)
    monkeypatch.undo()
    s.close()
    assert drain(Spool(tmp_path, 1 << 20)) == [big]


@pytest.mark.parametrize("fail", [errno.ENOSPC, errno.EIO, errno.EROFS])
def test_a_write_the_disk_refuses_midway_is_cut_off_and_counts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        fail: int) -> None:
    s = Spool(tmp_path, 1 << 20)
    s.append(batch(0))
    seg = next(tmp_path.glob("*.seg"))
    good = seg.read_bytes()
    disk = _Disk(monkeypatch, room=4096, fail=fail)  # 4096 of the record's bytes land, then the disk refuses
    with pytest.raises(OSError) as e:
        s.append(batch(1, n=400))
    assert e.value.errno == fail
    assert seg.read_bytes() == good, "the torn part is cut off again (and its space freed)"
    assert (len(s), s.bytes) == (1, len(good))
    disk.room = 1 << 30  # space is back
    s.append(batch(2))
    monkeypatch.undo()
    s.close()
    assert drain(Spool(tmp_path, 1 << 20)) == [batch(0), batch(2)]


def test_a_failed_fsync_is_not_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After fsync fails the kernel may have dropped the pages: the record must not count, nor stay half there."""
    s = Spool(tmp_path, 1 << 20)
    s.append(batch(0))
    good = next(tmp_path.glob("*.seg")).read_bytes()
    disk = _Disk(monkeypatch, room=1 << 30)
    disk.fsync_error = errno.EIO
    with pytest.raises(OSError):
        s.append(batch(1))
    disk.fsync_error = None
    assert next(tmp_path.glob("*.seg")).read_bytes() == good and len(s) == 1
    s.append(batch(2))
    monkeypatch.undo()
    assert drain(s) == [batch(0), batch(2)]
