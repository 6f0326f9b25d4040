"""The dead-letter store: every message or line the collector could not write, kept with its reason.

One JSON object per line in a file per UTC day, appended and fsynced before
the message is acked, so a rejection is never lost either. Operators read it
with `kerbside dlq list|show` and, once the cause is fixed (registry entry
added, schema conflict resolved), send entries through again with `replay`.
Replays are recorded in replayed.jsonl instead of editing the day files.

Junk must not fill the disk the spool and the sequence state need: the store
has a byte budget (dlq.max_bytes) checked before each write, and of a payload
larger than the contract allows only the first KEEP_BYTES are kept, with its
size and SHA-256 (a 50 MB message costs a few kB; it could never be replayed
anyway). Reading streams the files line by line, so `dlq list` and `dlq show`
take the memory of one entry, whatever the store holds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kerbside.collector.storage import WARN_RATIO, StoreFull
from kerbside.core.contract import MAX_PAYLOAD
from kerbside.core.errors import StorageError
from kerbside.core.files import append_synced

log = logging.getLogger("kerbside.collector.dlq")

LINE_TOPIC = ""
"""Topic of an entry holding an InfluxDB line (reason influx_rejected) rather than an MQTT payload."""
KEEP_BYTES = 2048
"""Of a payload larger than the contract's maximum, only this many bytes are stored (plus its size and hash)."""
DEFAULT_MAX_BYTES = 256 << 20


class NoSuchEntry(StorageError, LookupError):
    """No dead letter, or more than one, matches the id (prefix) asked for."""


class DlqFull(StoreFull):
    """The dead-letter store reached dlq.max_bytes: the collector stops acking until there is room."""


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    time: float
    topic: str
    reason: str
    detail: str
    payload: bytes
    """What was kept: all of it, or the first KEEP_BYTES of an oversize payload."""
    size: int
    """Bytes the message had."""
    sha256: str
    """Of the whole payload, as received."""

    @property
    def is_line(self) -> bool:
        return self.topic == LINE_TOPIC

    @property
    def truncated(self) -> bool:
        return len(self.payload) < self.size


def _entry(d: dict) -> Entry:
    payload = base64.b64decode(d["payload"])
    size = int(d.get("size", len(payload)))
    sha = d.get("sha256") or hashlib.sha256(payload).hexdigest()  # entries written before size and hash were kept
    return Entry(d["id"], d["time"], d["topic"], d["reason"], d["detail"], payload, size, sha)


class DeadLetters:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self._seq = 0
        self._ends: dict[Path, int] = {}
        """Where the last complete line of each file written to ends."""
        self.bytes = self._measure()
        """Bytes the store's files take (measured again when the budget looks exceeded)."""
        self._warned = False

    # --- size -----------------------------------------------------------------------
    def _measure(self) -> int:
        try:
            return sum(p.stat().st_size for p in self.dir.glob("*.jsonl"))
        except FileNotFoundError:
            return 0

    def _check(self, more: int) -> None:
        if self.bytes + more > self.max_bytes:
            self.bytes = self._measure()  # an operator may have moved old day files away
            if self.bytes + more > self.max_bytes:
                raise DlqFull(f"dead-letter store {self.dir} holds {self.bytes} of {self.max_bytes} bytes "
                              "(dlq.max_bytes): look at them (kerbside dlq list), then move old day files away")

    # --- writing --------------------------------------------------------------------
    def _append(self, path: Path, data: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            end = self._ends.get(path)
            if end is None:
                end = _complete_length(fd)
            size = os.fstat(fd).st_size
            self._ends[path] = append_synced(fd, data, end)
        finally:
            os.close(fd)
        self.bytes += len(data) - (size - end)

    def add_many(self, items: list[tuple[str, str, str, bytes]], now: float | None = None) -> list[str]:
        """Append (topic, reason, detail, payload) entries with one fsync; returns their ids.

        Raises DlqFull at the budget and OSError when the disk refuses; then nothing was added."""
        if not items:
            return []
        now = time.time() if now is None else now
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        ids, out = [], []
        for topic, reason, detail, payload in items:
            self._seq += 1
            entry_id = f"{time.time_ns():x}-{os.getpid():x}-{self._seq:x}"
            ids.append(entry_id)
            kept = payload if len(payload) <= MAX_PAYLOAD else payload[:KEEP_BYTES]
            out.append(json.dumps({"id": entry_id, "time": now, "topic": topic, "reason": reason, "detail": detail,
                                   "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
                                   "payload": base64.b64encode(kept).decode()}, separators=(",", ":")) + "\n")
        data = "".join(out).encode()
        self._check(len(data))
        self._append(self.dir / f"{day}.jsonl", data)
        if self.bytes >= WARN_RATIO * self.max_bytes and not self._warned:
            self._warned = True
            log.error("DEAD-LETTER STORE NEARLY FULL: %d of %d bytes in %s. When full, the collector stops acking: "
                      "see what is there (kerbside dlq list) and move old day files away.",
                      self.bytes, self.max_bytes, self.dir)
        return ids

    def add(self, topic: str, reason: str, detail: str, payload: bytes) -> str:
        return self.add_many([(topic, reason, detail, payload)])[0]

    def mark_replayed(self, ids: list[str]) -> None:
        if not ids:
            return
        now = time.time()
        self._append(self.dir / "replayed.jsonl", "".join(json.dumps({"id": i, "time": now}) + "\n" for i in ids).encode())

    # --- reading (streamed) ---------------------------------------------------------------
    def _lines(self, path: Path) -> Iterator[dict]:
        """The file's entries; a torn line (a crash mid-write, never acked) is skipped."""
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return
        with f:
            for raw in f:
                try:
                    doc = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(doc, dict):
                    yield doc

    def replayed(self) -> set[str]:
        return {d["id"] for d in self._lines(self.dir / "replayed.jsonl") if "id" in d}

    def entries(self, include_replayed: bool = False) -> Iterator[Entry]:
        """Oldest first, one at a time."""
        done = set() if include_replayed else self.replayed()
        for path in sorted(self.dir.glob("????-??-??.jsonl")):
            for d in self._lines(path):
                try:
                    e = _entry(d)
                except (ValueError, KeyError, TypeError):
                    continue
                if e.id not in done:
                    yield e

    def get(self, prefix: str) -> Entry:
        hits = []
        for e in self.entries(include_replayed=True):
            if e.id.startswith(prefix):
                hits.append(e)
                if len(hits) > 1:
                    break
        if len(hits) != 1:
            raise NoSuchEntry(f"{'more than one entry' if hits else '0 entries'} match {prefix!r}"
                              + (" (give more of the id)" if hits else "") + "; see kerbside dlq list")
        return hits[0]


def _complete_length(fd: int) -> int:
    """Up to the last newline: a line without one was torn by a crash (never acked) and is cut by the next append."""
    size = os.fstat(fd).st_size
    pos = size
    while pos > 0:
        start = max(0, pos - 4096)
        chunk = os.pread(fd, pos - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0
