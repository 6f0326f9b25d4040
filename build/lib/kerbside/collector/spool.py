"""The local spool: batches InfluxDB could not take yet, appended and fsynced before their messages are acked.

Append-only segment files of length+CRC framed records, replayed oldest first.
A cursor file (atomically replaced) remembers how far replay got, so a crash
during replay re-sends at most one batch, which InfluxDB overwrites with
identical points. A torn record at the tail (crash mid-append) was never
acked, so the broker still holds its messages: it is cut off on open.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from kerbside.core.errors import StorageError
from kerbside.core.files import atomic_write, fsync_dir

log = logging.getLogger("kerbside.collector.spool")

_HEAD = struct.Struct("<4sII")
_MAGIC = b"KSP1"
SEGMENT_BYTES = 16 << 20


class SpoolFull(StorageError, RuntimeError):
    """The spool reached max_bytes: the caller stops acking so the broker keeps the messages."""


@dataclass(frozen=True, slots=True)
class Batch:
    rp: str
    lines: list[str]


def _encode(batch: Batch) -> bytes:
    body = (batch.rp + "\n" + "\n".join(batch.lines)).encode()
    return _HEAD.pack(_MAGIC, len(body), zlib.crc32(body)) + body


class Spool:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, warn_ratio: float = 0.8) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.warn_ratio = warn_ratio
        self._cursor_path = self.dir / "cursor.json"
        self._segments = sorted(int(p.stem) for p in self.dir.glob("*.seg"))
        self._head, self._offset = self._read_cursor()
        self._segments = [s for s in self._segments if s >= self._head]
        for s in sorted(int(p.stem) for p in self.dir.glob("*.seg")):
            if s < self._head:
                (self.dir / f"{s:012d}.seg").unlink()
        if self._segments:
            self._repair_tail(self._segments[-1])
        self._fd: int | None = None
        self._warned = False
        self.bytes = self._measure()
        self.records = self._count()

    # --- persistence helpers -------------------------------------------------
    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:012d}.seg"

    def _read_cursor(self) -> tuple[int, int]:
        try:
            doc = json.loads(self._cursor_path.read_text())
            return int(doc["segment"]), int(doc["offset"])
        except FileNotFoundError:
            return (self._segments[0] if self._segments else 0), 0
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{self._cursor_path} is corrupt ({e}); move the spool dir aside and restart") from e

    def _write_cursor(self) -> None:
        atomic_write(self._cursor_path, json.dumps({"segment": self._head, "offset": self._offset}))

    def _repair_tail(self, seg: int) -> None:
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
            log.warning("spool: cutting %d torn bytes off %s (never acked, the broker redelivers them)", len(data) - pos, path)
            with open(path, "r+b") as f:
                f.truncate(pos)
                os.fsync(f.fileno())

    def _measure(self) -> int:
        total = sum(self._path(s).stat().st_size for s in self._segments)
        return max(0, total - (self._offset if self._segments and self._segments[0] == self._head else 0))

    def _count(self) -> int:
        n = 0
        for seg in self._segments:
            data = self._path(seg).read_bytes()
            pos = self._offset if seg == self._head else 0
            while pos + _HEAD.size <= len(data):
                _, length, _ = _HEAD.unpack_from(data, pos)
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
        """Durable when this returns (fsynced); raises SpoolFull instead of growing past max_bytes."""
        rec = _encode(batch)
        if self.bytes + len(rec) > self.max_bytes:
            raise SpoolFull(f"spool {self.dir} holds {self.bytes} of {self.max_bytes} bytes")
        if self._fd is None or not self._segments or self._path(self._segments[-1]).stat().st_size >= SEGMENT_BYTES:
            self._open_new_segment()
        assert self._fd is not None
        os.write(self._fd, rec)
        os.fsync(self._fd)
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
        seg = (self._segments[-1] + 1) if self._segments else max(self._head, 1)
        self._segments.append(seg)
        if len(self._segments) == 1:
            self._head, self._offset = seg, 0
            self._write_cursor()
        self._fd = os.open(self._path(seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fsync_dir(self.dir)

    def peek(self) -> Batch | None:
        """The oldest batch, or None when the spool is empty."""
        while self._segments:
            seg = self._segments[0]
            if seg != self._head:
                self._head, self._offset = seg, 0
            with open(self._path(seg), "rb") as f:
                f.seek(self._offset)
                head = f.read(_HEAD.size)
                if len(head) == _HEAD.size:
                    magic, length, crc = _HEAD.unpack(head)
                    body = f.read(length)
                    if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
                        raise StorageError(f"spool record at {self._path(seg)}:{self._offset} is corrupt")
                    rp, _, text = body.decode().partition("\n")
                    return Batch(rp, text.split("\n") if text else [])
            if len(self._segments) == 1:
                return None  # the live segment, fully replayed
            self._drop_head()
        return None

    def pop(self) -> None:
        """Mark the oldest batch as written to InfluxDB."""
        seg = self._segments[0]
        with open(self._path(seg), "rb") as f:
            f.seek(self._offset)
            _, length, _ = _HEAD.unpack(f.read(_HEAD.size))
        self._offset += _HEAD.size + length
        self.bytes = max(0, self.bytes - _HEAD.size - length)
        self.records -= 1
        if self.records == 0:
            self._reset()
        else:
            self._write_cursor()
        if self.fill < self.warn_ratio / 2:
            self._warned = False

    def _drop_head(self) -> None:
        seg = self._segments.pop(0)
        self._path(seg).unlink()
        self._head, self._offset = (self._segments[0] if self._segments else seg + 1), 0
        self._write_cursor()

    def _reset(self) -> None:
        """Empty: delete every segment so the next outage starts from a clean file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        last = self._segments[-1] if self._segments else self._head
        for seg in self._segments:
            self._path(seg).unlink(missing_ok=True)
        self._segments = []
        self._head, self._offset = last + 1, 0
        self.bytes = 0
        self._write_cursor()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
