"""The local spool: batches InfluxDB could not take yet, appended and fsynced before their messages are acked.

Append-only segment files of length+CRC framed records, replayed oldest first,
several records merged into one write of up to batch.lines lines (one POST and
one cursor update per merged write: replay runs at the speed of direct writes).

The cursor (how far replay got) is a fixed-size record overwritten in place in
one of two slots, each with its own CRC and a counter: updating it needs no new
disk space, so a full disk can always be drained, and a torn update leaves the
other slot, one replay behind (InfluxDB overwrites the identical points).
Segments are deleted as soon as replay has passed them, which frees their space.

An append is complete and fsynced or cut back off (kerbside.core.files.append_synced);
a torn record at the tail (a crash mid-append, never acked, so the broker still
holds its messages) is ignored on open and cut off by the next append. Opening a
spool writes nothing, so a collector restarts on a full or read-only disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from kerbside.collector.storage import StoreFull
from kerbside.core.errors import StorageError
from kerbside.core.files import append_synced, fsync_dir, write_all

log = logging.getLogger("kerbside.collector.spool")

_HEAD = struct.Struct("<4sII")
_MAGIC = b"KSP1"
SEGMENT_BYTES = 16 << 20
"""Largest segment; a small spool uses max_bytes/16 so that replay frees space as it goes."""
MIN_SEGMENT_BYTES = 64 << 10
_CURSOR = struct.Struct("<4sQQQ")
_CURSOR_MAGIC = b"KSC2"
_SLOT = _CURSOR.size + 4  # + CRC32


class SpoolFull(StoreFull, RuntimeError):
    """The spool reached max_bytes: the caller stops acking so the broker keeps the messages."""


@dataclass(frozen=True, slots=True)
class Batch:
    rp: str
    lines: list[str]


def _encode(batch: Batch) -> bytes:
    body = (batch.rp + "\n" + "\n".join(batch.lines)).encode()
    return _HEAD.pack(_MAGIC, len(body), zlib.crc32(body)) + body


def _slot(counter: int, segment: int, offset: int) -> bytes:
    body = _CURSOR.pack(_CURSOR_MAGIC, counter, segment, offset)
    return body + struct.pack("<I", zlib.crc32(body))


class Spool:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, warn_ratio: float = 0.8) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.warn_ratio = warn_ratio
        self.segment_bytes = min(SEGMENT_BYTES, max(MIN_SEGMENT_BYTES, max_bytes // 16))
        self._cursor_path = self.dir / "cursor"
        self._legacy_cursor = self.dir / "cursor.json"
        self._cursor_fd: int | None = None
        self._counter = 0
        found = sorted(int(p.stem) for p in self.dir.glob("*.seg"))
        self._head, self._offset = self._read_cursor(found)
        self._segments = [s for s in found if s >= self._head]
        for s in found:
            if s < self._head:  # replayed before a crash kept it from being deleted
                with contextlib.suppress(OSError):
                    self._path(s).unlink()
        if self._segments and self._segments[0] != self._head:
            self._head, self._offset = self._segments[0], 0  # its segment was deleted after the cursor moved on
        self._fd: int | None = None
        self._end = self._complete_length(self._segments[-1]) if self._segments else 0
        """Where the last complete record of the live (last) segment ends."""
        self._peeked: tuple[int, int, int, int] | None = None
        """The range the last peek() returned: segment, offset after it, records, bytes."""
        self._warned = False
        self.bytes = self._measure()
        self.records = self._count()

    # --- persistence helpers -------------------------------------------------
    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:012d}.seg"

    def _read_cursor(self, found: list[int]) -> tuple[int, int]:
        try:
            raw = self._cursor_path.read_bytes()
        except FileNotFoundError:
            return self._read_legacy_cursor(found)
        best = None
        for i in range(2):
            slot = raw[i * _SLOT:(i + 1) * _SLOT]
            if len(slot) != _SLOT or zlib.crc32(slot[:_CURSOR.size]) != struct.unpack("<I", slot[_CURSOR.size:])[0]:
                continue  # torn by a crash mid-update: the other slot holds the previous cursor
            magic, counter, seg, off = _CURSOR.unpack(slot[:_CURSOR.size])
            if magic == _CURSOR_MAGIC and (best is None or counter > best[0]):
                best = (counter, seg, off)
        if best is None:
            raise StorageError(f"{self._cursor_path} is corrupt (no valid slot); move the spool dir aside and restart "
                               "(its batches can be recovered from the .seg files)")
        self._counter = best[0]
        return best[1], best[2]

    def _read_legacy_cursor(self, found: list[int]) -> tuple[int, int]:
        """cursor.json, which earlier versions replaced atomically; the next cursor update converts it."""
        try:
            doc = json.loads(self._legacy_cursor.read_text())
            return int(doc["segment"]), int(doc["offset"])
        except FileNotFoundError:
            return (found[0] if found else 0), 0
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{self._legacy_cursor} is corrupt ({e}); move the spool dir aside and restart") from e

    def _write_cursor(self) -> None:
        """Overwrite the older slot in place and fsync: no new blocks, so this works on a full disk."""
        if self._cursor_fd is None:
            self._open_cursor()
        assert self._cursor_fd is not None
        self._counter += 1
        slot = _slot(self._counter, self._head, self._offset)
        written = 0
        while written < len(slot):
            n = os.pwrite(self._cursor_fd, slot[written:], (self._counter % 2) * _SLOT + written)
            if n <= 0:
                raise OSError("cursor write made no progress")
            written += n
        os.fsync(self._cursor_fd)

    def _open_cursor(self) -> None:
        fd = os.open(self._cursor_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 2 * _SLOT:  # new: both slots, so that either can be overwritten in place
                write_all(fd, _slot(self._counter, self._head, self._offset) * 2)
                os.fsync(fd)
                fsync_dir(self.dir)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                self._cursor_path.unlink()
            raise
        self._cursor_fd = fd
        if self._legacy_cursor.exists():
            with contextlib.suppress(OSError):
                self._legacy_cursor.unlink()

    def _complete_length(self, seg: int) -> int:
        """Length of the segment up to its last complete record; a torn tail is left for the next append to cut."""
        path = self._path(seg)
        data = path.read_bytes()
        pos = 0
        while pos + _HEAD.size <= len(data):
            magic, length, crc = _HEAD.unpack_from(data, pos)
            body = data[pos + _HEAD.size: pos + _HEAD.size + length]
            if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
                if pos + _HEAD.size + length < len(data):
                    # More data follows: not a torn append but damage to records that were acked. Cutting
                    # here would drop every later batch too, so stop and let the operator decide.
                    raise StorageError(f"spool record at {path}:{pos} is corrupt and not the last one; move the spool "
                                       "dir aside and restart (its later batches can be recovered from the file)")
                break
            pos += _HEAD.size + length
        if pos != len(data):
            log.warning("spool: ignoring %d torn bytes at the end of %s (never acked, the broker redelivers them)",
                        len(data) - pos, path)
        return pos

    def _size(self, seg: int) -> int:
        return self._end if seg == self._segments[-1] else self._path(seg).stat().st_size

    def _measure(self) -> int:
        total = sum(self._size(s) for s in self._segments)
        return max(0, total - (self._offset if self._segments and self._segments[0] == self._head else 0))

    def _count(self) -> int:
        n = 0
        for seg in self._segments:
            end = self._size(seg)
            with open(self._path(seg), "rb") as f:
                pos = self._offset if seg == self._head else 0
                while pos + _HEAD.size <= end:
                    f.seek(pos)
                    _, length, _ = _HEAD.unpack(f.read(_HEAD.size))
                    pos += _HEAD.size + length
                    n += 1
        return n

    # --- public API ------------------------------------------------------------
    def __len__(self) -> int:
        return self.records

    @property
    def fill(self) -> float:
        return self.bytes / self.max_bytes

    def append(self, batch: Batch) -> None:
        """Durable when this returns (complete and fsynced). Raises SpoolFull instead of growing past max_bytes,
        OSError when the disk refuses; then nothing was added."""
        rec = _encode(batch)
        if self.bytes + len(rec) > self.max_bytes:
            raise SpoolFull(f"spool {self.dir} holds {self.bytes} of {self.max_bytes} bytes (spool.max_bytes)")
        if self._fd is None or not self._segments or self._end >= self.segment_bytes:
            self._open_new_segment()
        assert self._fd is not None
        self._end = append_synced(self._fd, rec, self._end)
        self.bytes += len(rec)
        self.records += 1
        if self.fill >= self.warn_ratio and not self._warned:
            self._warned = True
            log.error("SPOOL NEARLY FULL: %d of %d bytes (%.0f%%) in %s; InfluxDB has not taken data for a while. "
                      "When full, the collector stops acking and the broker queues instead.",
                      self.bytes, self.max_bytes, 100 * self.fill, self.dir)

    def _open_new_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._segments and self._path(self._segments[-1]).stat().st_size != self._end:
            os.truncate(self._path(self._segments[-1]), self._end)  # a torn tail must not end up before later records
        seg = (self._segments[-1] + 1) if self._segments else max(self._head, 1)
        if not self._segments:
            old = self._head, self._offset
            self._head, self._offset = seg, 0
            try:
                self._write_cursor()
            except OSError:
                self._head, self._offset = old
                raise
        fd = os.open(self._path(seg), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fsync_dir(self.dir)
        except OSError:
            os.close(fd)
            raise
        self._segments.append(seg)
        self._fd, self._end = fd, 0

    def peek(self, max_lines: int = 0) -> Batch | None:
        """The oldest batch, merged with the following ones of the same retention policy up to max_lines lines
        (0: one batch); None when the spool is empty. pop() then removes exactly what this returned."""
        self._peeked = None
        while self._segments:
            seg = self._segments[0]
            if seg != self._head:
                self._head, self._offset = seg, 0
            found = self._read(seg, self._offset, max_lines)
            if found is not None:
                batch, end, records = found
                self._peeked = (seg, end, records, end - self._offset)
                return batch
            if len(self._segments) == 1:
                return None  # the live segment, fully replayed
            self._drop_head()
        return None

    def _read(self, seg: int, offset: int, max_lines: int) -> tuple[Batch, int, int] | None:
        end = self._size(seg)
        rp: str | None = None
        lines: list[str] = []
        records = 0
        pos = offset
        path = self._path(seg)
        with open(path, "rb") as f:
            f.seek(pos)
            while pos + _HEAD.size <= end:
                magic, length, crc = _HEAD.unpack(f.read(_HEAD.size))
                body = f.read(length)
                if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
                    raise StorageError(f"spool record at {path}:{pos} is corrupt; move the spool dir aside and restart "
                                       "(its later batches can be recovered from the file)")
                this_rp, _, text = body.decode().partition("\n")
                these = text.split("\n") if text else []
                if records and (this_rp != rp or len(lines) + len(these) > max_lines):
                    break
                rp = this_rp
                lines.extend(these)
                records += 1
                pos += _HEAD.size + length
                if max_lines <= 0:
                    break
        if not records:
            return None
        assert rp is not None
        return Batch(rp, lines), pos, records

    def pop(self) -> None:
        """Mark what the last peek() returned as written to InfluxDB (one cursor update for all of it)."""
        if self._peeked is None and self.peek() is None:
            return
        assert self._peeked is not None
        seg, end, records, size = self._peeked
        self._peeked = None
        if records == self.records:
            self._reset()
        else:
            old = self._head, self._offset
            self._head, self._offset = seg, end
            try:
                self._write_cursor()
            except OSError:
                self._head, self._offset = old
                raise
            self.records -= records
            self.bytes = max(0, self.bytes - size)
        if self.fill < self.warn_ratio / 2:
            self._warned = False

    def _drop_head(self) -> None:
        """The head segment is replayed: move the cursor past it, then delete it (which frees its space)."""
        seg = self._segments[0]
        old = self._head, self._offset
        self._head, self._offset = self._segments[1], 0
        try:
            self._write_cursor()
        except OSError:
            self._head, self._offset = old
            raise
        self._segments.pop(0)
        with contextlib.suppress(OSError):  # left behind, it is deleted on the next open (it is behind the cursor)
            self._path(seg).unlink()

    def _reset(self) -> None:
        """Everything replayed: move the cursor past the last segment and delete them all, so the next outage
        starts from a clean file."""
        last = self._segments[-1] if self._segments else self._head
        old = self._head, self._offset
        self._head, self._offset = last + 1, 0
        try:
            self._write_cursor()
        except OSError:
            self._head, self._offset = old
            raise
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for seg in self._segments:
            with contextlib.suppress(OSError):
                self._path(seg).unlink()
        self._segments = []
        self._end = 0
        self.bytes = 0
        self.records = 0

    def close(self) -> None:
        for name in ("_fd", "_cursor_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
