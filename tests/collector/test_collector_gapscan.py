"""`kerbside gaps scan`: gap records from the sequence numbers in InfluxDB, as the live tracker would write them."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.services

DEV = "5ca40001"
TRF = "5ca40002"
PERIOD = 60


def _air(seq: int, t0: int) -> str:
    return f"air,device={DEV},site=s1,zone=lez pm25=9.8,seq={seq}i {(t0 + seq * PERIOD) * 10**9}"


def _flow(seq: int, t0: int) -> list[str]:
    return [f"traffic_flow,device={TRF},direction={d},kit=traffic interval=60i,seq={seq}i {(t0 + seq * PERIOD) * 10**9}"
            for d in ("in", "out")]


def _scan(influx, *extra: str) -> str:
    p = subprocess.run([sys.executable, "-m", "kerbside", "gaps", "scan", "--influx", influx.url, "--db", influx.db,
                        "--since", "1d", *extra], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _gaps(influx) -> dict[tuple[str, int], tuple[int, int, int, int]]:
    out = {}
    for s in influx.query('SELECT "first_seq", "last_seq", "missing", "period" FROM "kerbside_gaps" GROUP BY "device"'):
        for t, first, last, missing, period in s["values"]:
            out[s["tags"]["device"], t] = (first, last, missing, period)
    return out


def test_scan_records_gaps_and_shrinks_them_as_backfill_arrives(influx) -> None:
    t0 = int(time.time()) - 200 * PERIOD
    have = [s for s in range(100) if not (40 <= s <= 49 or s == 70)]
    influx.write([_air(s, t0) for s in have] + [ln for s in range(50) if s != 7 for ln in _flow(s, t0)])

    dry = _scan(influx, "--dry-run")
    assert dry.count("kerbside_gaps,") == 3 and _gaps(influx) == {}, "dry run writes nothing"
    _scan(influx)
    gaps = _gaps(influx)
    ts40, ts70, ts7 = ((t0 + s * PERIOD) * 10**9 for s in (40, 70, 7))
    assert gaps == {(DEV, ts40): (40, 49, 10, 60), (DEV, ts70): (70, 70, 1, 60), (TRF, ts7): (7, 7, 1, 60)}
    tags = influx.query('SHOW TAG VALUES FROM "kerbside_gaps" WITH KEY IN ("site", "zone", "kit")')[0]["values"]
    assert sorted(tuple(v) for v in tags) == [("kit", "traffic"), ("site", "s1"), ("zone", "lez")]

    _scan(influx)
    assert _gaps(influx) == gaps, "scanning again changes nothing"

    influx.write([_air(s, t0) for s in (40, 41, 42, 45, 46)])  # backfill, not in order, leaving 43-44 and 47-49
    _scan(influx)
    gaps = _gaps(influx)
    assert gaps[DEV, ts40] == (40, 49, 5, 60), "the recorded gap shrinks; its holes do not become new records"
    assert len(gaps) == 3

    influx.write([_air(s, t0) for s in (43, 44, 47, 48, 49, 70)] + _flow(7, t0))
    _scan(influx)
    assert {k: v[2] for k, v in _gaps(influx).items()} == {(DEV, ts40): 0, (DEV, ts70): 0, (TRF, ts7): 0}


def test_scan_rejects_a_bad_window(influx) -> None:
    p = subprocess.run([sys.executable, "-m", "kerbside", "gaps", "scan", "--influx", influx.url, "--db", influx.db,
                        "--since", "6 hours"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "use a number with m, h or d" in p.stderr


def test_scan_on_the_real_influxd_agrees_with_the_live_tracker(influx) -> None:
    """The pure comparison (test_collector_gaps_agree.py) once more through InfluxDB: the decoder's own lines in,
    the scan's queries and records through the real database, a scan after every message."""
    import random

    from seq_histories import deliver, node, scan_records, tracker_records  # type: ignore[import-not-found]

    from kerbside.collector.decode import decode
    from kerbside.collector.gaps import SeqTracker
    from kerbside.collector.gapscan import scan
    from knode import wire

    rng = random.Random(2024)
    start = int(time.time()) - 3 * 86400
    streams = [deliver(node(d, rng, readings=100, start=start), rng) for d in (DEV, "5ca40003")]
    arrivals = [m for pair in itertools.zip_longest(*streams) for m in pair if m is not None]
    tracker = SeqTracker()
    for step, m in enumerate(arrivals):
        live = tracker_records(tracker.observe(m.device, m.seq, m.count, m.t0, m.period, {}))
        payload = wire.encode_readings(bytes.fromhex(m.device), m.seq, 1, True, 1, m.t0, m.period, 6,
                                       [(6, [1, 2, 3, 4, 5, 10000])] * m.count)
        influx.write(decode(wire.topic(m.device, "readings"), payload, time.time()).lines)
        records = scan(lambda q: influx.query(q), 7 * 86400)
        influx.write([r.line() for r in records])
        assert live == scan_records(records), f"message {step}: {m}"
    assert tracker.gaps_opened >= 5 and tracker.duplicates > 0 and tracker.missing() > 0
    stored = influx.query('SELECT "missing" FROM "kerbside_gaps"')  # one point per gap, rewritten as it shrank
    assert sum(row[1] for row in stored[0]["values"]) == tracker.missing()
