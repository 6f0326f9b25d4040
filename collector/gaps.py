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

from kerbside.collector.storage import StoreFull
from kerbside.core import lineproto
from kerbside.core.errors import StorageError
from kerbside.core.files import append_synced, atomic_write

_NS = 1_000_000_000
MEASUREMENT = "kerbside_gaps"
MAX_OPEN_GAPS = 1000
"""Per device. Beyond this the oldest gap stops being tracked; its last record stays in InfluxDB."""
COMPACT_EVERY = 500
"""Journal entries between two full rewrites of the sequence state."""
MAX_JUMP = 1_000_000
"""A sequence jump this large (either way) is a node reset or reflash, not lost data: tracking restarts there."""
DEFAULT_MAX_BYTES = 64 << 20


class StateFull(StoreFull):
    """The sequence state outgrew state.max_bytes even after compaction: the collector stops acking."""


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
    def __init__(self, path: str | os.PathLike[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path) if path else None
        self.journal = self.path.with_suffix(".journal") if self.path else None
        self.max_bytes = max_bytes
        self.devices: dict[str, DeviceSeq] = {}
        self._changed: set[str] = set()
        self._rebase: set[str] = set()
        """Devices whose next jump is not a gap (see rebase())."""
        self._cuts = 0
        """Snapshots taken; each journal entry and the full state file carry the cut number they belong to."""
        self._file_bytes = 0
        self._journal_end = 0
        """Where the journal's last complete entry ends (the writer thread's; a torn tail is cut by the next append)."""
        self.duplicates = 0
        self.gaps_opened = 0
        self.gaps_suppressed = 0
        self.resets = 0
        if self.path and self.path.exists():
            self._load()

    @property
    def bytes(self) -> int:
        """What the state takes on disk: the full file and the journal."""
        return self._file_bytes + self._journal_end

    def rebase(self) -> None:
        """Take each device's next readings as a new start, not as a jump: after a stretch in which another
        client (one with our client id) took some of our messages, those are in InfluxDB, not missing."""
        self._rebase = set(self.devices)

    def observe(self, device: str, seq: int, count: int, t0: int, period: int, tags: Mapping[str, str],
                may_open: bool = True) -> list[str]:
        """Account readings seq..seq+count-1 (reading i at t0 + i*period); returns gap lines to write.

        may_open=False: a jump past the highest sequence is not a gap (counted in gaps_suppressed), for while
        another client may be taking some of our messages."""
        hi_new = seq + count - 1
        t_new = t0 + (count - 1) * period
        st = self.devices.get(device)
        if st is None or abs(seq - st.hi) > MAX_JUMP:
            if st is not None:
                self.resets += 1
            self.devices[device] = DeviceSeq(hi_new, t_new, period)
            self._changed.add(device)
            return []
        if self._rebase and device in self._rebase:
            self._rebase.discard(device)
            may_open = False
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
            if seq > old_hi + 1 and not may_open:
                self.gaps_suppressed += 1
            elif seq > old_hi + 1:
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
        assert self.path is not None
        cut, devices, self._file_bytes, self._journal_end = self._read()
        self._cuts = cut
        try:
            self._apply(devices)
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{self.path} is corrupt ({e!r}); move it aside to start sequence tracking afresh") from e

    def _read(self, extra: dict | None = None) -> tuple[int, dict[str, dict], int, int]:
        """The last full state with the journal entries written after it (and `extra`, an entry not yet written):
        (cut, devices, full file bytes, where the journal's last complete entry ends)."""
        assert self.path is not None and self.journal is not None
        try:
            raw = self.path.read_text()
            doc = json.loads(raw)
            cut = int(doc.get("cut", 0))
            devices = dict(doc["devices"])
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{self.path} is corrupt ({e}); move it aside to start sequence tracking afresh") from e
        good = 0
        if self.journal.exists():
            with open(self.journal, "rb") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        # Torn by a crash mid-append: that batch was not acked, the broker redelivers it. Nothing
                        # follows it (an append first cuts what lies past the last complete entry).
                        break
                    good += len(line)
                    if entry["cut"] > cut:
                        devices.update(entry["devices"])
                        cut = entry["cut"]
        if extra is not None and extra["cut"] > cut:
            devices.update(extra["devices"])
            cut = extra["cut"]
        return cut, devices, len(raw.encode()), good

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
        """Fsynced before the messages the state reflects are acked: a journal append, or an atomic full rewrite.

        Within state.max_bytes: a journal that would grow past half of it is folded into a full rewrite first
        (the state as of this entry: the file, the journal and the entry). Raises StateFull when even the full
        state does not fit, OSError when the disk refuses; then nothing changed.
        """
        if self.path is None or self.journal is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if '"full":true' in state[:40]:
            self._write_full(state)
            return
        if not self.path.exists():
            self._write_full(json.dumps({"cut": 0, "full": True, "devices": {}}, separators=(",", ":")))
        entry = (state + "\n").encode()
        if self.bytes + len(entry) > self.max_bytes // 2:
            cut, devices, _, _ = self._read(json.loads(state))
            self._write_full(json.dumps({"cut": cut, "full": True, "devices": devices}, separators=(",", ":")))
            return
        fd = os.open(self.journal, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._journal_end = append_synced(fd, entry, self._journal_end)
        finally:
            os.close(fd)

    def _write_full(self, state: str) -> None:
        size = len(state.encode())
        if size + self.bytes > self.max_bytes:  # the old file and journal stay until the new file is in place
            raise StateFull(f"sequence state {self.path} needs {size} bytes besides the {self.bytes} it holds, over "
                            f"state.max_bytes = {self.max_bytes}: raise it (it grows with the number of devices)")
        assert self.path is not None and self.journal is not None
        atomic_write(self.path, state)
        self._file_bytes = size
        # entries up to this cut are in the file now; a crash before the truncate leaves older ones,
        # which _read skips by their cut number
        with open(self.journal, "w") as f:
            os.fsync(f.fileno())
        self._journal_end = 0

    def save(self) -> None:
        if self.dirty:
            self.write(self.snapshot())
