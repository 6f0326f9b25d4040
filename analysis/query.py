"""The analyst's query API: pandas DataFrames with data capture attached, days in local time.

Data-capture definitions (also in docs/analysts.md):

* reading capture (from the node) = samples / samples expected in that reading.
* hourly capture = sum of reading captures in the hour / readings expected in
  the hour (3600 / period_s). A missing reading counts as 0, so this equals
  samples received / samples expected when every reading expects the same.
* hourly capture of a pollutant = min(hourly capture, readings carrying that
  pollutant / readings expected): a channel that dropped out is not rescued by
  the other channels' samples.
* an hourly mean is valid if its capture >= 75 %; a daily mean (local day, 23,
  24 or 25 h) is the mean of the valid hours and valid with >= 18 of them;
  a period/annual mean is the mean of valid hours, valid with >= 90 % valid hours.
  That is the one definition of a period mean: the report, the exports and
  docs/analysts.md all use it (for a group of sites: all its sites' valid hours).

Calibrated values: `hourly(..., calibrations=...)` replaces a node's hourly mean by
the calibrated one where `kerbside calibrate` stored coefficients for that hour
(analysis.calibration); `<p>_raw` keeps the sensor's value, `<p>_calibrated` says which.
"""

from __future__ import annotations

from datetime import date

import pandas as pd

from kerbside.analysis import calibration
from kerbside.analysis.influx import Influx
from kerbside.analysis.limits import POLLUTANTS, capture_rules, limits
from kerbside.analysis.schema import AGG_RP, RAW_RP
from kerbside.analysis.timerange import LocalRange
from kerbside.core.contract import TRAFFIC_CLASSES
from kerbside.core.errors import AnalysisError
from kerbside.core.influx import quote_ident, quote_str

EPS = 1e-9
TAGS = ("device", "site", "zone", "kit")


class NoDataError(AnalysisError, LookupError):
    pass


def _where(rng: LocalRange, sites: list[str] | None = None) -> str:
    cond = rng.where()
    if sites:
        cond += " AND (" + " OR ".join(f"site = {quote_str(s)}" for s in sites) + ")"
    return "WHERE " + cond


def _localise(df: pd.DataFrame, tz: str) -> pd.DataFrame:
    df["local_time"] = df["time"].dt.tz_convert(tz)
    df["day"] = df["local_time"].dt.date
    for t in TAGS:
        if t not in df:
            df[t] = None
    return df


def readings(client: Influx, rng: LocalRange, measurement: str = "air", sites: list[str] | None = None) -> pd.DataFrame:
    """Raw points of one measurement (air, traffic, traffic_flow, status) as stored by the collector."""
    df = client.frame(f"SELECT * FROM {quote_ident(RAW_RP)}.{quote_ident(measurement)} {_where(rng, sites)}")
    if df.empty:
        raise NoDataError(f"no {measurement} readings between {rng.first} and {rng.last}")
    return _localise(df, rng.tz)


def hourly(client: Influx, rng: LocalRange, period_s: int = 60, sites: list[str] | None = None,
           calibrations: calibration.Calibrations | None = None) -> pd.DataFrame:
    """Hourly air means per device from the aggregate RP, with capture and validity per pollutant.

    Hours with no reading at all are absent from the aggregates and therefore
    from this frame; they count as invalid hours in `daily` and `period_means`.
    With `calibrations` (calibration.load(registry)), calibrated means replace raw ones where coefficients apply.
    """
    df = client.frame(f"SELECT * FROM {quote_ident(AGG_RP)}.{quote_ident('air_1h')} {_where(rng, sites)}")
    if df.empty:
        raise NoDataError(f"no hourly air aggregates between {rng.first} and {rng.last}: "
                          "if raw readings exist, run `kerbside db backfill` for that range")
    df = _localise(df, rng.tz)
    expected = 3600 / period_s
    rule = capture_rules().hour_min_fraction
    df["capture"] = (df["capture_sum"].fillna(0) / expected).clip(upper=1.0)
    for p in POLLUTANTS:
        if p not in df:  # a network without that sensor: keep the columns, all hours invalid
            df[p], df[f"{p}_n"] = float("nan"), 0
    for c in ("rh", "temp", "pressure"):
        if c not in df:
            df[c] = float("nan")
    df = calibration.apply(df, calibrations or {})
    for p in POLLUTANTS:
        n = df[f"{p}_n"].fillna(0)
        df[f"{p}_capture"] = pd.concat([df["capture"], (n / expected).clip(upper=1.0)], axis=1).min(axis=1)
        df[f"{p}_valid"] = (df[f"{p}_capture"] >= rule - EPS) & df[p].notna()
    return df.sort_values(["site", "device", "time"]).reset_index(drop=True)


def _day_hours(rng: LocalRange) -> pd.Series:
    days = rng.days()
    hours = [LocalRange(d, d, rng.tz).hours() for d in days]
    return pd.Series(hours, index=pd.Index(days, name="day"), name="hours_in_day")


def daily(hours: pd.DataFrame, rng: LocalRange) -> pd.DataFrame:
    """Daily means per device and local day from valid hours; `<p>_valid` applies the 18-hour rule.

    Every day of the range appears for every device, even with no data, so
    missing days are visible as invalid instead of silently absent.
    """
    need = capture_rules().day_min_valid_hours
    keys = ["device", "site", "zone"]
    devices = hours[keys].drop_duplicates()
    grid = devices.merge(_day_hours(rng).reset_index(), how="cross")
    out = grid
    for p in POLLUTANTS:
        v = hours[hours[f"{p}_valid"]]
        g = v.groupby([*keys, "day"], dropna=False)[p].agg(["mean", "count"]).reset_index()
        g = g.rename(columns={"mean": p, "count": f"{p}_hours"})
        out = out.merge(g, on=[*keys, "day"], how="left")
        out[f"{p}_hours"] = out[f"{p}_hours"].fillna(0).astype(int)
        out[f"{p}_valid"] = out[f"{p}_hours"] >= need
        out[f"{p}_capture"] = out[f"{p}_hours"] / out["hours_in_day"]
    return out.sort_values([*keys, "day"]).reset_index(drop=True)


def period_means(hours: pd.DataFrame, rng: LocalRange) -> pd.DataFrame:
    """Mean of valid hours per device over the range, with capture = valid hours / hours in range."""
    total = rng.hours()
    rule = capture_rules().year_min_fraction
    rows = []
    for (device, site, zone), g in hours.groupby(["device", "site", "zone"], dropna=False):
        row = {"device": device, "site": site, "zone": zone, "hours": total}
        for p in POLLUTANTS:
            v = g.loc[g[f"{p}_valid"], p]
            row[p] = float(v.mean()) if len(v) else float("nan")
            row[f"{p}_capture"] = len(v) / total
            row[f"{p}_valid"] = len(v) / total >= rule - EPS
        rows.append(row)
    return pd.DataFrame(rows)


def _periods_in_year(year: int, averaging: str, tz: str) -> int:
    y = LocalRange(date(year, 1, 1), date(year, 12, 31), tz)
    return y.hours() if averaging == "hour" else len(y.days())


def exceedances(hours: pd.DataFrame, days: pd.DataFrame, scheme: str = "EU2030",
                rng: LocalRange | None = None) -> pd.DataFrame:
    """Exceedance counts per device, pollutant, short-term limit and calendar year (local time).

    Counts only valid hours/days, so `count` is a lower bound when capture is
    poor; `valid_periods` says how many hours or days could be judged, `periods`
    how many the calendar year has. `verdict`:

    * "n/a": no valid period, nothing can be said;
    * "exceeded": more exceedances than allowed per year already (whatever the missing periods hold);
    * "not exceeded": the whole calendar year analysed (`rng`), >= 90 % of its periods valid, count <= allowed;
    * "open": otherwise (part of a year, or too few valid periods to say).

    `breach` is True / False where the verdict is exceeded / not exceeded, None where it cannot be said.
    Every device of `days` appears for every short-term limit and year, with count 0 where nothing
    exceeded, so "no exceedance" and "no data" never look alike.
    """
    rule = capture_rules().year_min_fraction
    tz = rng.tz if rng is not None else str(hours["local_time"].dt.tz) if len(hours) else "UTC"
    keys = ["device", "site", "zone"]
    grid = days[keys].assign(year=pd.to_datetime(days["day"]).dt.year).drop_duplicates()
    rows = []
    for lim in limits(scheme):
        if lim.averaging == "year":
            continue
        src = hours if lim.averaging == "hour" else days
        src = src.assign(year=pd.to_datetime(src["day"]).dt.year)
        for key in grid.itertuples(index=False):
            g = src[(src["device"] == key.device) & (src["year"] == key.year)]
            ok = g[g[f"{lim.pollutant}_valid"].astype(bool)]
            n = int((ok[lim.pollutant] > lim.value).sum())
            year = int(key.year)
            periods = _periods_in_year(year, lim.averaging, tz)
            whole = rng is not None and rng.first <= date(year, 1, 1) and rng.last >= date(year, 12, 31)
            allowed = lim.max_exceedances
            if len(ok) == 0:
                verdict = "n/a"
            elif allowed is not None and n > allowed:
                verdict = "exceeded"
            elif whole and len(ok) >= rule * periods - EPS:
                verdict = "not exceeded"
            else:
                verdict = "open"
            rows.append({"device": key.device, "site": key.site, "zone": key.zone, "year": year, "scheme": scheme,
                         "pollutant": lim.pollutant, "averaging": lim.averaging, "limit": lim.value,
                         "count": n, "allowed": allowed, "valid_periods": len(ok), "periods": periods,
                         "verdict": verdict,
                         "breach": True if verdict == "exceeded" else False if verdict == "not exceeded" else None})
    return pd.DataFrame(rows)


def coverage(hours: pd.DataFrame, rng: LocalRange) -> tuple[list[date], dict[date, str]]:
    """The days of `rng` the network covered whole, and the partial or empty ones with why.

    The network's span is its first to its last hourly aggregate (any device). A day that starts before
    the first hour or ends after the last one is partial: its hours are not comparable with whole days
    (half a day of night-time readings has a lower mean), so the report leaves it out and says so.
    """
    if hours.empty:
        return [], {d: "no data" for d in rng.days()}
    first = hours["time"].min()
    last = hours["time"].max() + pd.Timedelta(hours=1)
    whole, partial = [], {}
    for d in rng.days():
        day = LocalRange(d, d, rng.tz)
        start, end = pd.Timestamp(day.start), pd.Timestamp(day.end)
        if end <= first or start >= last:
            partial[d] = "no data"
        elif start < first:
            partial[d] = f"data from {first.tz_convert(rng.tz):%H:%M} only"
        elif end > last:
            partial[d] = f"data until {last.tz_convert(rng.tz):%H:%M} only"
        else:
            whole.append(d)
    return whole, partial


def stored_readings(client: Influx, rng: LocalRange) -> pd.DataFrame:
    """Readings stored per device in the range: air readings, and traffic readings (inbound direction: one per reading)."""
    out = []
    for m, extra in (("air", ""), ("traffic_flow", " AND direction = 'in'")):
        df = client.frame(f"SELECT count(seq) AS stored FROM {quote_ident(RAW_RP)}.{quote_ident(m)} "
                          f"WHERE {rng.where()}{extra} GROUP BY device, site, zone")
        if not df.empty:
            out.append(df.assign(kit="air" if m == "air" else "traffic")[["device", "site", "zone", "kit", "stored"]])
    if not out:
        return pd.DataFrame(columns=["device", "site", "zone", "kit", "stored"])
    return pd.concat(out, ignore_index=True)


def traffic_hourly(client: Influx, rng: LocalRange, sites: list[str] | None = None) -> pd.DataFrame:
    """Vehicles per site, local hour and class (both directions summed), with total and heavy share."""
    df = client.frame(f"SELECT sum(count) AS count FROM {quote_ident(AGG_RP)}.{quote_ident('traffic_1h')} "
                      f"{_where(rng, sites)} GROUP BY time(1h), site, zone, class")
    if df.empty:
        raise NoDataError(f"no hourly traffic aggregates between {rng.first} and {rng.last}: "
                          "if raw counts exist, run `kerbside db backfill` for that range")
    df = df.dropna(subset=["count"])
    df = _localise(df, rng.tz)
    wide = df.pivot_table(index=["site", "zone", "time", "local_time", "day"], columns="class", values="count",
                          aggfunc="sum", fill_value=0).reset_index()
    wide.columns.name = None
    for c in TRAFFIC_CLASSES:
        if c not in wide:
            wide[c] = 0
    wide["total"] = wide[list(TRAFFIC_CLASSES)].sum(axis=1)
    wide["heavy_share"] = (wide["heavy"] / wide["total"]).where(wide["total"] > 0)
    return wide.sort_values(["site", "time"]).reset_index(drop=True)


def traffic_capture(client: Influx, rng: LocalRange) -> pd.DataFrame:
    """Capture per traffic node and direction over the range: sum of reading captures / readings expected.

    Readings expected = hours in the range x 3600 / the node's reading interval (stored with each reading),
    so hours with no reading at all count as missing.
    """
    df = client.frame(f"SELECT capture_sum, interval FROM {quote_ident(AGG_RP)}.{quote_ident('traffic_flow_1h')} "
                      f"WHERE {rng.where()} GROUP BY device, site, zone, direction")
    cols = ["device", "site", "zone", "direction", "hours", "capture"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df["expected"] = 3600 / df["interval"]
    out = df.groupby(["device", "site", "zone", "direction"], dropna=False).agg(
        got=("capture_sum", "sum"), per_hour=("expected", "median"), hours=("time", "count")).reset_index()
    out["capture"] = out["got"] / (out["per_hour"] * rng.hours())
    return out[cols]


def gaps(client: Influx, rng: LocalRange) -> pd.DataFrame:
    """Gaps recorded by the collector; `missing` is what is still missing after any late backfill (0 = recovered)."""
    df = client.frame(f"SELECT * FROM {quote_ident(RAW_RP)}.{quote_ident('kerbside_gaps')} {_where(rng)}")
    cols = ["time", "local_time", "day", "device", "site", "zone", "kit", "first_seq", "last_seq", "missing", "period"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = _localise(df, rng.tz)
    df["expected"] = df["last_seq"] - df["first_seq"] + 1
    df["recovered"] = df["missing"] == 0
    return df[[*cols, "expected", "recovered"]].sort_values(["device", "time"]).reset_index(drop=True)


def zones(client: Influx) -> set[str]:
    """Zone tag values present in the air aggregates, to reject a mistyped --zone early."""
    out = set()
    for m in ("air_1h", "traffic_1h"):
        for s in client.query(f'SHOW TAG VALUES FROM {quote_ident(AGG_RP)}.{quote_ident(m)} WITH KEY = "zone"'):
            out |= {row[1] for row in s["values"]}
    return out


def span(client: Influx, tz: str) -> LocalRange:
    """The local days covered by the hourly air aggregates: the default range for reports."""
    first = client.frame(f"SELECT first(capture_sum) FROM {quote_ident(AGG_RP)}.{quote_ident('air_1h')}")
    last = client.frame(f"SELECT last(capture_sum) FROM {quote_ident(AGG_RP)}.{quote_ident('air_1h')}")
    if first.empty or last.empty:
        raise NoDataError("no hourly air aggregates in the database: is this the right --db, and has "
                          "`kerbside db init` (or `kerbside db backfill`) run?")
    return LocalRange(first["time"].iloc[0].tz_convert(tz).date(), last["time"].iloc[0].tz_convert(tz).date(), tz)
