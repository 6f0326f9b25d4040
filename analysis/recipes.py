"""The analyst's ready-to-paste recipes, with placeholders that `kerbside recipes` (and `kerbside demo`) fill in.

docs/analysts.md shows exactly these templates (tests/analysis/test_an_docs.py checks it, and runs them
filled in against a real InfluxDB), so a recipe that works here works when pasted from the guide.

Placeholders: {influx_url} {host} {port} {db} {tz} {site} {zone} {first} {last} (local days),
{start} {end} (local midnight of {first} and after {last}, with their UTC offset), {after} (the LEZ
start day) and {after_start} (its local midnight). Count recipes come in pairs: the first counts the
valid periods, the second the exceedances, so "no exceedance" (a site in the first answer only) and
"no data" (a site in neither) never look alike: InfluxQL's count() returns no row at all for zero.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from datetime import date

from kerbside.analysis.timerange import LocalRange, local_midnight


@dataclass(frozen=True)
class Recipe:
    title: str
    text: str
    lang: str = "sql"


RECIPES: tuple[Recipe, ...] = (
    Recipe("Hourly NO2 means of one site on the first day, with the 75 % capture filter, in local time",
           "SELECT no2, no2_n, capture_sum / 60 AS capture FROM agg.air_1h WHERE site = '{site}' AND capture_sum >= 45 "
           "AND no2_n >= 45 AND time >= '{start}' AND time < '{first_end}' tz('{tz}')"),
    Recipe("Valid daily PM10 means per site, then the days above 45 µg/m³ (EU 2030 allows 18 a year); "
           "a site in the first answer and not in the second had none",
           "SELECT count(pm10) AS valid_days FROM (SELECT mean(pm10) AS pm10, count(pm10) AS hours FROM agg.air_1h "
           "WHERE capture_sum >= 45 AND pm10_n >= 45 AND time >= '{start}' AND time < '{end}' GROUP BY time(1d), site "
           "tz('{tz}')) WHERE hours >= 18 GROUP BY site; "
           "SELECT count(pm10) AS days_over_45 FROM (SELECT mean(pm10) AS pm10, count(pm10) AS hours FROM agg.air_1h "
           "WHERE capture_sum >= 45 AND pm10_n >= 45 AND time >= '{start}' AND time < '{end}' GROUP BY time(1d), site "
           "tz('{tz}')) WHERE hours >= 18 AND pm10 > 45 GROUP BY site"),
    Recipe("Valid NO2 hours per site, then the hours above 200 µg/m³ (EU 2030 allows 3 a year)",
           "SELECT count(no2) AS valid_hours FROM agg.air_1h WHERE capture_sum >= 45 AND no2_n >= 45 "
           "AND time >= '{start}' AND time < '{end}' GROUP BY site; "
           "SELECT count(no2) AS hours_over_200 FROM agg.air_1h WHERE no2 > 200 AND capture_sum >= 45 AND no2_n >= 45 "
           "AND time >= '{start}' AND time < '{end}' GROUP BY site"),
    Recipe("Inside vs outside the zone from the LEZ start on: period mean (mean of valid hours) and valid hours",
           "SELECT mean(no2) AS no2, count(no2) AS valid_hours FROM agg.air_1h WHERE capture_sum >= 45 AND no2_n >= 45 "
           "AND time >= '{after_start}' AND time < '{end}' GROUP BY zone"),
    Recipe("Heavy vehicles per site and local day",
           "SELECT sum(count) AS heavy FROM agg.traffic_1h WHERE class = 'heavy' AND time >= '{start}' "
           "AND time < '{end}' GROUP BY time(1d), site tz('{tz}')"),
    Recipe("Gaps still open (readings a node took that never arrived)",
           "SELECT device, site, first_seq, last_seq, missing FROM raw.kerbside_gaps WHERE missing > 0 "
           "AND time >= '{start}' AND time < '{end}'"),
)

PYTHON = Recipe("The same from Python, with data capture, calibration and local days done for you", '''\
from datetime import date
from kerbside.analysis import calibration, query
from kerbside.analysis.did import did
from kerbside.analysis.influx import Influx
from kerbside.analysis.timerange import LocalRange

client = Influx("{influx_url}", "{db}")
rng = LocalRange(date.fromisoformat("{first}"), date.fromisoformat("{last}"), "{tz}")  # whole local days
cal = calibration.load("{registry}")             # {{}} when no node was calibrated
hours = query.hourly(client, rng, period_s=60, calibrations=cal)  # per device-hour, <p>_valid, <p>_calibrated
days = query.daily(hours, rng)                   # per device and local day, 18-hour rule
means = query.period_means(hours, rng)           # per device: mean of valid hours, 90 % rule
ex = query.exceedances(hours, days, "EU2030", rng)  # count, valid_periods, verdict (n/a, open, exceeded, ...)
lez = did(days, "no2", zone="{zone}", before=date.fromisoformat("{after}"), after=date.fromisoformat("{after}"))
print(round(lez.estimate, 1), round(lez.ci_low, 1), round(lez.ci_high, 1))''', "python")


def values(influx_url: str, db: str, rng: LocalRange, site: str, zone: str = "lez", after: date | None = None,
           registry: str = "kerbside-registry.json") -> dict[str, str]:
    u = urllib.parse.urlparse(influx_url)
    after = after or rng.first
    return {"influx_url": influx_url, "host": u.hostname or "127.0.0.1", "port": str(u.port or 8086), "db": db,
            "tz": rng.tz, "site": site, "zone": zone, "first": str(rng.first), "last": str(rng.last),
            "start": rng.start.isoformat(), "end": rng.end.isoformat(),
            "first_end": LocalRange(rng.first, rng.first, rng.tz).end.isoformat(),
            "after": str(after), "after_start": local_midnight(after, rng.tz).isoformat(), "registry": registry}


def fill(recipe: Recipe, vals: dict[str, str]) -> str:
    return recipe.text.format(**vals)


def shell(sql: str, vals: dict[str, str]) -> str:
    """The influx CLI line that runs one filled-in recipe (InfluxQL here never holds a double quote)."""
    return f'influx -host {vals["host"]} -port {vals["port"]} -database {vals["db"]} -execute "{sql}"'


def lines(vals: dict[str, str]) -> list[str]:
    """Every recipe filled in: a title, then the influx command (or the Python)."""
    out = []
    for r in RECIPES:
        out += [f"# {r.title}", shell(fill(r, vals), vals), ""]
    return [*out, f"# {PYTHON.title}", fill(PYTHON, vals)]
