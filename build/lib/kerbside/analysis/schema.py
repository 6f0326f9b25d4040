"""Database layout: retention policies and the continuous queries that keep hourly aggregates.

Hourly aggregates store, besides each mean, how many readings and sensor
samples went into it, so the 75 % data-capture rule can be applied later at
query time (a CQ cannot know how many readings were expected). Daily means are
deliberately NOT a CQ: an EU daily mean is the mean of the *valid* hours of a
*local* day, which needs the capture rule and DST-aware days (analysis.query).

Late data: each CQ recomputes the last `resample_for` of hours every
`resample_every`, so readings a node back-fills within that window fix the
aggregate on their own. Readings older than the window never reach the
aggregates until `kerbside db backfill --from --to` recomputes that range
(recomputing is idempotent: same series, same timestamps, points overwritten).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from kerbside.core.contract import AIR_CHANNELS, AIR_POLLUTANTS
from kerbside.core.influx import InfluxClient, quote_ident

RAW_RP = "raw"
AGG_RP = "agg"
UNSYNCED_RP = "unsynced"

AIR_COUNTED = AIR_POLLUTANTS
"""Air fields whose hourly reading count is kept (`<field>_n`): the concentrations, judged by data capture."""
AIR_MEANS = AIR_COUNTED + tuple(ch.name for ch in AIR_CHANNELS if ch.name not in AIR_COUNTED)
"""Every air channel gets an hourly mean: pollutants first, then temp, rh, pressure."""


@dataclass(frozen=True)
class Aggregate:
    name: str
    """The continuous query and the target measurement in the aggregate RP."""
    source: str
    select: str


def _air_select() -> str:
    cols = [f"mean({f}) AS {f}" for f in AIR_MEANS] + [f"count({f}) AS {f}_n" for f in AIR_COUNTED]
    cols += ["sum(samples) AS samples", "sum(capture) AS capture_sum", "count(seq) AS readings"]
    return ", ".join(cols)


AGGREGATES = (
    Aggregate("air_1h", "air", _air_select()),
    Aggregate("traffic_1h", "traffic", "sum(count) AS count"),
    Aggregate("traffic_flow_1h", "traffic_flow",
              "sum(vehicles) AS vehicles, mean(speed) AS speed, sum(samples) AS samples, "
              "sum(capture) AS capture_sum, count(seq) AS readings, mean(interval) AS interval"),
)


@dataclass(frozen=True)
class Layout:
    db: str
    raw_duration: str = "400d"
    agg_duration: str = "INF"
    resample_every: str = "5m"
    resample_for: str = "6h"


def _select_into(layout: Layout, agg: Aggregate, where: str = "") -> str:
    db = quote_ident(layout.db)
    return (f"SELECT {agg.select} INTO {db}.{quote_ident(AGG_RP)}.{quote_ident(agg.name)} "
            f"FROM {db}.{quote_ident(RAW_RP)}.{quote_ident(agg.source)} {where}GROUP BY time(1h), *")


def init_statements(layout: Layout) -> list[str]:
    """Idempotent statements: re-running init updates durations and recreates the CQs."""
    db = quote_ident(layout.db)
    out = [f"CREATE DATABASE {db}"]
    for rp, duration, default in ((RAW_RP, layout.raw_duration, True), (AGG_RP, layout.agg_duration, False),
                                  (UNSYNCED_RP, "INF", False)):
        out.append(f"CREATE RETENTION POLICY {quote_ident(rp)} ON {db} DURATION {duration} REPLICATION 1"
                   + (" DEFAULT" if default else ""))
    for agg in AGGREGATES:
        out.append(f"DROP CONTINUOUS QUERY {quote_ident(agg.name)} ON {db}")
        out.append(f"CREATE CONTINUOUS QUERY {quote_ident(agg.name)} ON {db} "
                   f"RESAMPLE EVERY {layout.resample_every} FOR {layout.resample_for} "
                   f"BEGIN {_select_into(layout, agg)} END")
    return out


def _existing_rps(client: InfluxClient, db: str) -> set[str]:
    return {row[0] for s in client.query(f"SHOW RETENTION POLICIES ON {quote_ident(db)}") for row in s["values"]}


def init_db(client: InfluxClient, layout: Layout) -> list[str]:
    """Create or update the database; returns the statements run (for the CLI to show)."""
    done = []
    client.query(f"CREATE DATABASE {quote_ident(layout.db)}", post=True)
    existing = _existing_rps(client, layout.db)
    for stmt in init_statements(layout)[1:]:
        if stmt.startswith("CREATE RETENTION POLICY"):
            name = stmt.split()[3].strip('"')
            if name in existing:
                stmt = "ALTER" + stmt[len("CREATE"):]
        if stmt.startswith("DROP CONTINUOUS QUERY"):
            cqs = {row[0] for s in client.query("SHOW CONTINUOUS QUERIES") if s.get("name") == layout.db
                   for row in s.get("values", [])}
            if stmt.split()[3].strip('"') not in cqs:
                continue
        client.query(stmt, post=True)
        done.append(stmt)
    return done


def backfill(client: InfluxClient, start: datetime, end: datetime, chunk: timedelta = timedelta(days=7),
             progress: Callable[[int, int], None] | None = None) -> int:
    """Recompute every hourly aggregate for [start, end), widened to whole UTC hours; returns points written.

    Chunked so a year does not become one huge query; `progress(done, total)` is called per chunk.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("backfill needs time-zone-aware start and end")
    if end <= start:
        raise ValueError(f"empty range: --to ({end.isoformat()}) must be after --from ({start.isoformat()})")
    hour = timedelta(hours=1)
    epoch = datetime(1970, 1, 1, tzinfo=start.tzinfo).astimezone(start.tzinfo)
    lo = start - ((start - epoch) % hour)
    hi = end + ((-(end - epoch)) % hour)
    chunks = []
    t = lo
    while t < hi:
        chunks.append((t, min(t + chunk, hi)))
        t += chunk
    total = len(chunks) * len(AGGREGATES)
    written = done = 0
    layout = Layout(client.db)
    for a, b in chunks:
        where = f"WHERE time >= {int(a.timestamp())}s AND time < {int(b.timestamp())}s "
        for agg in AGGREGATES:
            for s in client.query(_select_into(layout, agg, where), post=True):
                written += int(s["values"][0][1])
            done += 1
            if progress:
                progress(done, total)
    return written
