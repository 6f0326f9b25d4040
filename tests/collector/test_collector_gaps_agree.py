"""The live tracker (collector/gaps.py) and `kerbside gaps scan` (collector/gapscan.py) report the same gaps.

Collectors in a shared-subscription group leave gap detection to the scan, so the two must agree: for any
delivery of a node's readings (lost messages, a backlog arriving after newer ones, redeliveries, reboots
that leave a time gap but no sequence gap) the records the tracker writes on each message are the ones a
scan run after that message writes. Compared without a database here; test_collector_gapscan.py runs the
scan against the real influxd.
"""

from __future__ import annotations

import random

import pytest
from seq_histories import NS, Msg, deliver, node, scan_records, tracker_records  # type: ignore[import-not-found]

from kerbside.collector.gaps import SeqTracker
from kerbside.collector.gapscan import Record, device_records


@pytest.mark.parametrize("seed", range(40))
def test_tracker_and_scan_write_the_same_records_after_every_message(seed: int) -> None:
    rng = random.Random(seed)
    devices = [f"5eed{seed:02x}{d:02x}" for d in range(3)]
    streams = [deliver(node(d, rng), rng) for d in devices]
    arrivals: list[Msg] = []
    while any(streams):  # the devices' deliveries interleaved
        s = rng.choice([s for s in streams if s])
        arrivals.append(s.pop(0))

    tracker = SeqTracker()
    present: dict[str, dict[int, int]] = {d: {} for d in devices}  # what InfluxDB holds: seq -> time ns
    written: dict[str, dict[int, Record]] = {d: {} for d in devices}  # gap records by timestamp (same point = overwrite)
    for step, m in enumerate(arrivals):
        live = tracker_records(tracker.observe(m.device, m.seq, m.count, m.t0, m.period, {}))
        for i in range(m.count):
            present[m.device][m.seq + i] = (m.t0 + i * m.period) * NS
        scanned: list[Record] = []
        for d in devices:  # a scan covers every device; those without news must yield nothing
            recs = device_records(d, (("device", d),), sorted(present[d].items()), list(written[d].values()))
            for r in recs:
                written[d][r.ts] = r
            scanned += recs
        assert live == scan_records(scanned), f"message {step}: {m}"
    missing_scan = sum(r.missing for recs in written.values() for r in recs.values())
    assert tracker.missing() == missing_scan
