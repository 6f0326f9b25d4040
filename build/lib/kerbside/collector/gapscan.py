"""Sequence gaps found from what InfluxDB holds: gap detection for collectors in a shared-subscription group.

In a `$share` group each collector sees only part of every device's sequence,
so live tracking (collector.gaps) would report the other members' readings as
missing. Group members therefore leave `kerbside_gaps` alone and one
`kerbside gaps scan` (a systemd timer every few minutes) reads the sequence
numbers back from InfluxDB and writes the same records, with the same rules as
the live tracker: one record per gap, timestamped at its first missing reading,
rewritten with a smaller `missing` as backfill arrives (0 = recovered). Holes
inside an already recorded gap shrink that record rather than starting new ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kerbside.collector.gaps import MEASUREMENT, record_line
from kerbside.core.influx import quote_ident, quote_str

Query = Callable[[str], list[dict]]

# One point per reading carries its sequence number here (traffic_flow has one per direction: take "in").
SOURCES = (("air", ""), ("traffic_flow", f" AND {quote_ident('direction')} = {quote_str('in')}"))
_NS = 1_000_000_000


@dataclass(frozen=True)
class Record:
    device: str
    tags: tuple[tuple[str, str], ...]
    ts: int
    first: int
    last: int
    missing: int
    period: int

    def line(self) -> str:
        return record_line(self.device, dict(self.tags), self.first, self.last, self.missing, self.period, self.ts)


def _series_tags(s: dict) -> tuple[str, tuple[tuple[str, str], ...]]:
    tags = {k: v for k, v in (s.get("tags") or {}).items() if k != "direction" and v}
    return tags["device"], tuple(sorted(tags.items()))


def _seqs(query: Query, since_s: int) -> dict[str, tuple[tuple[tuple[str, str], ...], list[tuple[int, int]]]]:
    """Per device: its tags and sorted (seq, time ns) pairs inside the window."""
    out: dict[str, tuple[tuple[tuple[str, str], ...], list[tuple[int, int]]]] = {}
    for measurement, where in SOURCES:
        q = f"SELECT {quote_ident('seq')} FROM {quote_ident(measurement)} WHERE time > now() - {since_s}s{where} GROUP BY *"
        for s in query(q):
            device, tags = _series_tags(s)
            pairs = out.setdefault(device, (tags, []))[1]
            pairs.extend((int(seq), int(t)) for t, seq in s["values"] if seq is not None)
    for _, pairs in out.values():
        pairs.sort()
    return out


def _holes(pairs: list[tuple[int, int]]) -> Iterable[tuple[int, int, int, int]]:
    """(first, last, ts ns, period s) of every run of missing sequence numbers between two present ones.

    The period is the spacing of consecutive readings next to the hole (the smaller, where both sides
    have one; else the device's smallest), as the live tracker takes the readings' own period: across a
    hole, or between two readings either side of a reboot, the node may have been down for a while, so
    the span would stretch it.
    """
    present = dict(pairs)
    spacings = [tb - ta for (a, ta), (b, tb) in itertools.pairwise(pairs) if b == a + 1]
    for (a, ta), (b, tb) in itertools.pairwise(pairs):
        if b > a + 1:
            before, after = present.get(a - 1), present.get(b + 1)
            near = ([ta - before] if before is not None else []) + ([after - tb] if after is not None else [])
            step = min(near) if near else min(spacings) if spacings else (tb - ta) / (b - a)
            period = max(1, round(step / _NS))
            yield a + 1, b - 1, ta + period * _NS, period


def _recorded(query: Query, since_s: int) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    fields = ", ".join(quote_ident(f) for f in ("first_seq", "last_seq", "missing", "period"))
    q = f"SELECT {fields} FROM {quote_ident(MEASUREMENT)} WHERE time > now() - {since_s}s GROUP BY *"
    for s in query(q):
        device, tags = _series_tags(s)
        for t, first, last, missing, period in s["values"]:
            out.setdefault(device, []).append(Record(device, tags, int(t), int(first), int(last), int(missing), int(period)))
    return out


def scan(query: Query, since_s: int) -> list[Record]:
    """Gap records to write: new gaps, and recorded ones whose `missing` changed. Idempotent."""
    present = _seqs(query, since_s)
    # a gap may have opened before the readings window: look further back for its record
    recorded = _recorded(query, since_s * 2)
    out: list[Record] = []
    for device, (tags, pairs) in present.items():
        out += device_records(device, tags, pairs, recorded.get(device, []))
    return out


def device_records(device: str, tags: tuple[tuple[str, str], ...], pairs: list[tuple[int, int]],
                   known: list[Record]) -> list[Record]:
    """One device's records to write, from its sorted (seq, time ns) pairs and the records already written.

    Pure, so tests compare it with the live tracker (collector.gaps) on any history without a database.
    """
    out: list[Record] = []
    seqs = {s for s, _ in pairs}
    for r in known:
        missing = sum(1 for s in range(r.first, r.last + 1) if s not in seqs)
        if missing != r.missing and (pairs and pairs[0][0] <= r.first):
            out.append(Record(device, r.tags, r.ts, r.first, r.last, missing, r.period))
    for first, last, ts, period in _holes(pairs):
        if any(r.first <= first and last <= r.last for r in known):
            continue  # part of a recorded gap, which was just recounted
        out.append(Record(device, tags, ts, first, last, last - first + 1, period))
    return out
