"""Per-device sequence tracking: missing readings become `kerbside_gaps` points, replays become a duplicate count.

Readings arrive out of order on purpose: after an outage a node drains its
backlog oldest first while new readings keep flowing. So a jump past the
highest sequence seen opens a gap whose holes shrink as the backlog arrives;
each change rewrites the same gap point (same tags and timestamp, so InfluxDB
overwrites it) with the smaller `missing`, down to 0 when fully recovered.

Schema (the analyst layer depends on it):
  kerbside_gaps,device=<id>[,kit=..,site=..,zone=..] first_seq=<int>i,last_seq=<int>i,missing=<int>i,period=<int>i <ts>
with ts the estimated time of the first missing reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kerbside.core import lineproto
from kerbside.core.errors import StorageError
from kerbside.core.files import atomic_write

_NS = 1_000_000_000
MEASUREMENT = "kerbside_gaps"
MAX_OPEN_GAPS = 1000
"""Per device. Beyond this the oldest gap stops being tracked; its last record stays in InfluxDB."""
COMPACT_EVERY = 500
"""Journal entries between two full rewrites of the sequence state."""
MAX_JUMP = 1_000_000
"""A sequence jump this large (either way) is a node reset or reflash, not lost data: tracking restarts there."""


@dataclass
class Gap:
    first: int
    last: int
    ts: int
    period: int
    holes: list[list[int]]

    @property
    def missing(self) -> int:
        return sum(b - a + 1 for a, b in self.holes)


@dataclass
class DeviceSeq:
    hi: int
    hi_t: int = 0
    """Node time (s) of the reading with sequence number hi: the first missing reading follows it."""
    period: int = 0
    gaps: list[Gap] = field(default_factory=list)


def gap_line(device: str, tags: Mapping[str, str], gap: Gap) -> str:
    """The gap's record; `kerbside gaps scan` writes the same one (gapscan.Record.line)."""
    return record_line(device, tags, gap.first, gap.last, gap.missing, gap.period, gap.ts)


def record_line(device: str, tags: Mapping[str, str], first: int, last: int, missing: int, period: int, ts: int) -> str:
    fields = {"first_seq": first, "last_seq": last, "missing": missing, "period": period}
    return lineproto.line(MEASUREMENT, {**tags, "device": device}, fields, ts)


def _subtract(holes: list[list[int]], lo: int, hi: int) -> tuple[list[list[int]], int]:
    """Remove [lo, hi] from the holes; returns the new holes and how many sequence numbers were filled."""
    out: list[list[int]] = []
    filled = 0
    for a, b in holes:
        if b < lo or a > hi:
            out.append([a, b])
            continue
        filled += min(b, hi) - max(a, lo) + 1
        if a < lo:
            out.append([a, lo - 1])
        if b > hi:
            out.append([hi + 1, b])
    return out, filled


class SeqTracker:
    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else None
        self.journal = self.path.with_suffix(".journal") if self.path else None
        self.devices: dict[str, DeviceSeq] = {}
        self._changed: set[str] = set()
        self._cuts = 0
        """Snapshots taken; each journal entry and the full state file carry the cut number they belong to."""
        self.duplicates = 0
        self.gaps_opened = 0
        self.resets = 0
        if self.path and self.path.exists():
            self._load()

    def observe(self, device: str, seq: int, count: int, t0: int, period: int, tags: Mapping[str, str]) -> list[str]:
        """Account readings seq..seq+count-1 (reading i at t0 + i*period); returns gap lines to write."""
        hi_new = seq + count - 1
        t_new = t0 + (count - 1) * period
        st = self.devices.get(device)
        if st is None or abs(seq - st.hi) > MAX_JUMP:
            if st is not None:
                self.resets += 1
            self.devices[device] = DeviceSeq(hi_new, t_new, period)
            self._changed.add(device)
            return []
        lines: list[str] = []
        old_hi = st.hi
        if seq <= old_hi:
            lo, hi = seq, min(hi_new, old_hi)
            filled_total = 0
            still_open = []
            for gap in st.gaps:
                if gap.last >= lo and gap.first <= hi:
                    gap.holes, filled = _subtract(gap.holes, lo, hi)
                    if filled:
                        filled_total += filled
                        lines.append(gap_line(device, tags, gap))
                if gap.holes:
                    still_open.append(gap)
            st.gaps = still_open
            self.duplicates += (hi - lo + 1) - filled_total
        if hi_new > old_hi:
            if seq > old_hi + 1:
                first, last = old_hi + 1, seq - 1
                ts = st.hi_t + st.period if st.period and st.hi_t + st.period < t0 else t0 - (seq - first) * period
                gap = Gap(first, last, max(0, ts) * _NS, period, [[first, last]])
                st.gaps.append(gap)
                self.gaps_opened += 1
                lines.append(gap_line(device, tags, gap))
                if len(st.gaps) > MAX_OPEN_GAPS:
                    st.gaps.pop(0)
            st.hi, st.hi_t, st.period = hi_new, t_new, period
        self._changed.add(device)
        return lines

    @property
    def dirty(self) -> bool:
        return bool(self._changed)

    # Read by the metrics thread while the decoder thread updates: iterate over copies (atomic under the GIL).
    def open_gaps(self) -> int:
        return sum(len(d.gaps) for d in list(self.devices.values()))

    def missing(self) -> int:
        return sum(g.missing for d in list(self.devices.values()) for g in list(d.gaps))

    def _load(self) -> None:
        """The last full state, then the journal entries written after it (a torn last entry was never acked)."""
        assert self.path is not None and self.journal is not None
        try:
            doc = json.loads(self.path.read_text())
            self._cuts = int(doc.get("cut", 0))
            self._apply(doc["devices"])
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{self.path} is corrupt ({e}); move it aside to start sequence tracking afresh") from e
        if self.journal.exists():
            good = 0
            data = self.journal.read_bytes()
            for line in data.splitlines(keepends=True):
                try:
                    entry = json.loads(line)
                except ValueError:
                    break  # torn by a crash mid-append: that batch was not acked, the broker redelivers it
                good += len(line)
                if entry["cut"] > self._cuts:
                    self._apply(entry["devices"])
                    self._cuts = entry["cut"]
            if good < len(data):
                os.truncate(self.journal, good)  # later entries must not be glued to the torn one

    def _apply(self, devices: dict[str, dict]) -> None:
        for dev, d in devices.items():
            self.devices[dev] = DeviceSeq(int(d["hi"]), int(d["hi_t"]), int(d["period"]), [Gap(**g) for g in d["gaps"]])

    @staticmethod
    def _dump(d: DeviceSeq) -> dict:
        return {"hi": d.hi, "hi_t": d.hi_t, "period": d.period,
                "gaps": [dict(g.__dict__, holes=[list(h) for h in g.holes]) for g in d.gaps]}

    def snapshot(self) -> str:
        """The state to save with the batch being cut, so that it matches exactly the messages acked with it.

        Usually only the devices this batch changed (a journal entry: the cost follows the batch, not the
        fleet); every COMPACT_EVERY cuts the whole state, which replaces the file and empties the journal.
        """
        self._cuts += 1
        full = self._cuts % COMPACT_EVERY == 0
        devices = self.devices if full else {dev: self.devices[dev] for dev in self._changed}
        self._changed.clear()
        body = {dev: self._dump(d) for dev, d in devices.items()}
        return json.dumps({"cut": self._cuts, "full": full, "devices": body}, separators=(",", ":"))

    def write(self, state: str) -> None:
        """Fsynced before the messages the state reflects are acked: a journal append, or an atomic full rewrite."""
        if self.path is None or self.journal is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if '"full":true' in state[:40]:
            atomic_write(self.path, state)
            # entries up to this cut are in the file now; a crash before the truncate leaves older ones,
            # which _load skips by their cut number
            with open(self.journal, "w") as f:
                os.fsync(f.fileno())
            return
        if not self.path.exists():
            self.write(json.dumps({"cut": 0, "full": True, "devices": {}}, separators=(",", ":")))
        with open(self.journal, "a") as f:
            f.write(state + "\n")
            f.flush()
            os.fsync(f.fileno())

    def save(self) -> None:
        if self.dirty:
            self.write(self.snapshot())
