"""What the fleet view reads from InfluxDB: a fixed number of GROUP BY queries per view, whatever the fleet's size.

A page over 1 000 nodes must not send 1 000 queries. The table, the map and the
heatmap together need three, each grouped by device: readings and capture per
hour (one statement over `air` and `traffic_flow`), the last reading, and the
open gaps. A node's detail needs one more, for that node only. All go through
the one client (kerbside.core.influx) and read the retention policy the
collector writes synced readings to (influx.rp).

Counting: one air point is one reading; a traffic reading is two traffic_flow
points (in and out), so traffic is counted on direction "in". Readings taken
without a synced clock are stamped with the node's own clock (year 2000) and
are not in the window.
"""

from __future__ import annotations

from typing import Any

from kerbside.collector.fleet import HOUR, Data
from kerbside.core.influx import InfluxClient, InfluxRefused, quote_ident, quote_str

GAPS_LOOKBACK_S = 30 * 86400
"""Open gaps older than this are not looked for (InfluxDB would scan every shard)."""
LAST_LOOKBACK_S = 7 * 86400
"""A last reading older than this shows as none."""
_NS = 1_000_000_000
READINGS = {"air": "air", "traffic": "traffic_flow"}
"""The measurement with one point per reading, per kit (traffic counted on direction "in")."""
MAIN = {"air": ("pm25", "no2", "temp"), "traffic": ("vehicles", "speed")}
"""Each kit's main channels: the node detail's sparklines and `fleet watch` lines."""


def _from(rp: str, *measurements: str) -> str:
    prefix = f"{quote_ident(rp)}." if rp else ""
    return ", ".join(prefix + quote_ident(m) for m in measurements)


def _missing_db(e: InfluxRefused) -> bool:
    return "database not found" in e.message


def hourly(client: InfluxClient, rp: str, start: int, end: int) -> dict[str, Data]:
    """Per device: readings and summed capture per hour in [start, end), and readings carrying each always-fitted
    channel. One statement for both kits."""
    hours = (end - start) // HOUR
    q = (f"SELECT count(seq) AS n, sum(capture) AS cap, count(pm25) AS pm25, count(temp) AS temp "
         f"FROM {_from(rp, 'air', 'traffic_flow')} WHERE time >= {start * _NS} AND time < {end * _NS} "
         f"AND direction != 'out' GROUP BY time(1h), device fill(none)")
    try:
        series = client.query(q, epoch="s")
    except InfluxRefused as e:
        if _missing_db(e):
            return {}
        raise
    out: dict[str, Data] = {}
    for s in series:
        dev = s.get("tags", {}).get("device")
        if not dev:
            continue
        d = out.setdefault(dev, Data([0] * hours, [0.0] * hours))
        cols = s["columns"]
        for row in s["values"]:
            r = dict(zip(cols, row, strict=True))
            i = (int(r["time"]) - start) // HOUR
            if 0 <= i < hours:
                d.counts[i] += int(r["n"] or 0)
                d.capture[i] += float(r["cap"] or 0.0)
                for ch in ("pm25", "temp"):
                    d.channels[ch] = d.channels.get(ch, 0) + int(r[ch] or 0)
    return out


def last_readings(client: InfluxClient, rp: str, now: float) -> dict[str, float]:
    """Per device: the time of its newest reading in the last week."""
    q = (f"SELECT last(seq) FROM {_from(rp, 'air', 'traffic_flow')} WHERE time >= {int(now - LAST_LOOKBACK_S) * _NS} "
         f"AND time <= {int(now + 3600) * _NS} GROUP BY device")
    out: dict[str, float] = {}
    for s in _query(client, q):
        dev = s.get("tags", {}).get("device")
        if dev:
            out[dev] = max(out.get(dev, 0.0), float(s["values"][0][0]))
    return out


def open_gaps(client: InfluxClient, rp: str, now: float) -> dict[str, tuple[int, int]]:
    """Per device: (gaps still missing readings, readings they miss). A gap record is rewritten with a smaller
    `missing` as backfill arrives (same timestamp), so what is stored is each gap's latest state."""
    q = (f"SELECT count(missing), sum(missing) FROM {_from(rp, 'kerbside_gaps')} WHERE missing > 0 "
         f"AND time >= {int(now - GAPS_LOOKBACK_S) * _NS} GROUP BY device")
    out: dict[str, tuple[int, int]] = {}
    for s in _query(client, q):
        dev = s.get("tags", {}).get("device")
        if dev:
            _, n, missing = s["values"][0]
            out[dev] = (int(n or 0), int(missing or 0))
    return out


def _query(client: InfluxClient, q: str) -> list[dict[str, Any]]:
    try:
        return client.query(q, epoch="s")
    except InfluxRefused as e:
        if _missing_db(e):
            return []
        raise


def fleet_data(client: InfluxClient, rp: str, start: int, end: int, now: float) -> dict[str, Data]:
    """Everything the table, map and heatmap need from InfluxDB: three queries."""
    data = hourly(client, rp, start, end)
    hours = (end - start) // HOUR
    for dev, t in last_readings(client, rp, now).items():
        data.setdefault(dev, Data([0] * hours, [0.0] * hours)).last_reading = t
    for dev, (n, missing) in open_gaps(client, rp, now).items():
        d = data.setdefault(dev, Data([0] * hours, [0.0] * hours))
        d.gaps_open, d.missing = n, missing
    return data


def series(client: InfluxClient, rp: str, device: str, kit: str, start: int, end: int,
           step_s: int = 900) -> dict[str, list[Any]]:
    """One node's main channels and capture over [start, end) in steps of `step_s` (the detail's sparklines)."""
    where = f"WHERE device = {quote_str(device)} AND time >= {start * _NS} AND time < {end * _NS}"
    if kit == "traffic":
        q = (f"SELECT sum(vehicles) AS vehicles, mean(speed) AS speed, sum(capture) AS cap, count(seq) AS n "
             f"FROM {_from(rp, 'traffic_flow')} {where} GROUP BY time({step_s}s) fill(none)")
    else:
        q = (f"SELECT mean(pm25) AS pm25, mean(no2) AS no2, mean(temp) AS temp, sum(capture) AS cap, count(seq) AS n "
             f"FROM {_from(rp, 'air')} {where} GROUP BY time({step_s}s) fill(none)")
    steps = (end - start) // step_s
    names = [*MAIN.get(kit, MAIN["air"]), "cap", "n"]
    out: dict[str, list[Any]] = {"t": [start + i * step_s for i in range(steps)], **{n: [None] * steps for n in names}}
    for s in _query(client, q):
        cols = s["columns"]
        for row in s["values"]:
            r = dict(zip(cols, row, strict=True))
            i = (int(r["time"]) - start) // step_s
            if 0 <= i < steps:
                for n in names:
                    v = r.get(n)
                    out[n][i] = round(v, 2) if isinstance(v, float) else v
    if kit == "traffic":  # two traffic_flow points per reading
        out["n"] = [None if v is None else v // 2 for v in out["n"]]
        out["cap"] = [None if v is None else round(v / 2, 4) for v in out["cap"]]
    return out


def recent(client: InfluxClient, rp: str, device: str, kit: str, after: float, limit: int = 20) -> list[dict[str, Any]]:
    """The node's newest readings after `after` (unix s), oldest first: what `fleet watch` prints as they arrive."""
    m = READINGS.get(kit, "air")
    fields = ", ".join(quote_ident(f) for f in ("seq", "capture", *MAIN.get(kit, MAIN["air"])))
    cond = " AND direction = 'in'" if kit == "traffic" else ""
    q = (f"SELECT {fields} FROM {_from(rp, m)} WHERE device = {quote_str(device)}{cond} "
         f"AND time > {int(after * _NS)} ORDER BY time DESC LIMIT {int(limit)}")
    rows = []
    for s in _query(client, q):
        cols = s["columns"]
        rows += [dict(zip(cols, row, strict=True)) for row in s["values"]]
    return sorted(rows, key=lambda r: r["time"])
