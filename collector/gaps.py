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

from collector.decode import escape_tag

_NS = 1_000_000_000
MAX_OPEN_GAPS = 1000
"""Per device. Beyond this the oldest gap stops being tracked; its last record stays in InfluxDB."""
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
    tagset = ",".join(f"{k}={escape_tag(v)}" for k, v in sorted({**tags, "device": device}.items()) if v)
    return (f"kerbside_gaps,{tagset} first_seq={gap.first}i,last_seq={gap.last}i,"
            f"missing={gap.missing}i,period={gap.period}i {gap.ts}")


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
        self.devices: dict[str, DeviceSeq] = {}
        self.dirty = False
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
            self.dirty = True
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
        self.dirty = True
        return lines

    # Read by the metrics thread while the decoder thread updates: iterate over copies (atomic under the GIL).
    def open_gaps(self) -> int:
        return sum(len(d.gaps) for d in list(self.devices.values()))

    def missing(self) -> int:
        return sum(g.missing for d in list(self.devices.values()) for g in list(d.gaps))

    def _load(self) -> None:
        assert self.path is not None
        try:
            doc = json.loads(self.path.read_text())
            for dev, d in doc["devices"].items():
                self.devices[dev] = DeviceSeq(int(d["hi"]), int(d["hi_t"]), int(d["period"]), [Gap(**g) for g in d["gaps"]])
        except (ValueError, KeyError, TypeError) as e:
            raise RuntimeError(f"{self.path} is corrupt ({e}); move it aside to start sequence tracking afresh") from e

    def snapshot(self) -> str:
        """The state as JSON, taken when a batch is cut so that it matches exactly the messages acked with it."""
        self.dirty = False
        return json.dumps({"devices": {dev: {"hi": d.hi, "hi_t": d.hi_t, "period": d.period,
                                              "gaps": [dict(g.__dict__, holes=[list(h) for h in g.holes]) for g in d.gaps]}
                                        for dev, d in self.devices.items()}}, separators=(",", ":"))

    def write(self, state: str) -> None:
        """Atomic and fsynced: called before the messages the state reflects are acked."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(state)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def save(self) -> None:
        if self.dirty:
            self.write(self.snapshot())
