"""The dead-letter store: every message or line the collector could not write, kept with its reason.

One JSON object per line in a file per UTC day, appended and fsynced before
the message is acked, so a rejection is never lost either. Operators read it
with `kerbside dlq list|show` and, once the cause is fixed (registry entry
added, schema conflict resolved), send entries through again with `replay`.
Replays are recorded in replayed.jsonl instead of editing the day files.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kerbside.core.errors import StorageError

LINE_TOPIC = ""
"""Topic of an entry holding an InfluxDB line (reason influx_rejected) rather than an MQTT payload."""


class NoSuchEntry(StorageError, LookupError):
    """No dead letter, or more than one, matches the id (prefix) asked for."""


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    time: float
    topic: str
    reason: str
    detail: str
    payload: bytes

    @property
    def is_line(self) -> bool:
        return self.topic == LINE_TOPIC


class DeadLetters:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._seq = 0

    def _open(self, day: str) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        return os.open(self.dir / f"{day}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def add_many(self, items: list[tuple[str, str, str, bytes]], now: float | None = None) -> list[str]:
        """Append (topic, reason, detail, payload) entries with one fsync; returns their ids."""
        if not items:
            return []
        now = time.time() if now is None else now
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        ids, out = [], []
        for topic, reason, detail, payload in items:
            self._seq += 1
            entry_id = f"{time.time_ns():x}-{os.getpid():x}-{self._seq:x}"
            ids.append(entry_id)
            out.append(json.dumps({"id": entry_id, "time": now, "topic": topic, "reason": reason, "detail": detail,
                                   "payload": base64.b64encode(payload).decode()}, separators=(",", ":")) + "\n")
        fd = self._open(day)
        try:
            os.write(fd, "".join(out).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return ids

    def add(self, topic: str, reason: str, detail: str, payload: bytes) -> str:
        return self.add_many([(topic, reason, detail, payload)])[0]

    def replayed(self) -> set[str]:
        path = self.dir / "replayed.jsonl"
        if not path.exists():
            return set()
        return {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}

    def mark_replayed(self, ids: list[str]) -> None:
        if not ids:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "replayed.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            now = time.time()
            os.write(fd, "".join(json.dumps({"id": i, "time": now}) + "\n" for i in ids).encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self, include_replayed: bool = False) -> Iterator[Entry]:
        """Oldest first. A torn last line (crash mid-write, never acked) is skipped."""
        done = set() if include_replayed else self.replayed()
        for path in sorted(self.dir.glob("????-??-??.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    d = json.loads(line)
                    e = Entry(d["id"], d["time"], d["topic"], d["reason"], d["detail"], base64.b64decode(d["payload"]))
                except (ValueError, KeyError):
                    continue
                if e.id not in done:
                    yield e

    def get(self, prefix: str) -> Entry:
        hits = [e for e in self.entries(include_replayed=True) if e.id.startswith(prefix)]
        if len(hits) != 1:
            raise NoSuchEntry(f"{len(hits)} entries match {prefix!r}" + (" (give more of the id)" if hits else "")
                              + "; see kerbside dlq list")
        return hits[0]
