"""The LEZ report for a city council and its officers: one self-contained HTML file with PNG plots.

Its first page is a summary a council member can read alone: what changed inside the zone relative
to outside, with 95 % intervals, in plain words, with the indicative-measurements caveat. The pages
after it are for officers: site x limit matrix, means with intervals, traffic, the estimate's
details, calibration and data quality.

Periods: "before" is every analysed day before --before; "after" every day from --after on; days in
between (a phase-in) are left out. Only whole days are analysed: a day the network did not cover
from local midnight to midnight (the first and last day of a deployment, usually) is listed and left
out, so half a day of night-time readings never lowers a mean.

One definition of a period mean, here, in analysis.query and in docs/analysts.md: the mean of the
valid hourly means in the period (for a group of sites, of all its sites' valid hours), with a 95 %
interval from resampling whole days (analysis.intervals). Means are compared only with limits of the
same averaging period: daily means with daily limits (the exceedance matrix), hourly with hourly;
annual limits only with a calendar year of data at >= 90 % capture, otherwise the report says so.

Thin data never crashes the report: every section says what is missing instead. The report also
writes each plot as a PNG and the key numbers as strict JSON (summary.json, no NaN) next to
report.html, so figures can be reused and results checked by machine.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from kerbside.analysis import calibration, intervals, query
from kerbside.analysis.did import DidError, DidResult, check_periods, did
from kerbside.analysis.influx import Influx
from kerbside.analysis.limits import POLLUTANTS, capture_rules, limit, limits
from kerbside.analysis.timerange import LocalRange
from kerbside.core.errors import AnalysisError
from kerbside.core.influx import InfluxRefused

LABEL = {"pm25": "PM2.5", "pm10": "PM10", "no2": "NO2"}
SUMMARY_ORDER = ("no2", "pm25", "pm10")
"""NO2 first on the summary page: traffic, and so a low emission zone, moves it most."""
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class ReportError(AnalysisError, ValueError):
    pass


@dataclass(frozen=True)
class ReportSpec:
    zone: str
    before: date
    after: date
    rng: LocalRange
    period_s: int = 60
    n_boot: int = 2000
    block_days: int = 1
    calibrations: calibration.Calibrations = field(default_factory=dict, compare=False)
    """Coefficients from the registry (calibration.load); empty: the sensors' own values."""


def _period(day: date, spec: ReportSpec) -> str | None:
    return "before" if day < spec.before else "after" if day >= spec.after else None


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _table(df: pd.DataFrame, digits: int = 1) -> Markup:
    """pandas escapes the cells; the template takes the table as it is."""
    return Markup(df.to_html(index=False, border=0, classes="t", na_rep="n/a",
                             float_format=lambda x: f"{x:.{digits}f}"))


def _strict(obj: Any) -> Any:
    """summary.json is strict JSON: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strict(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, date):
        return obj.isoformat()
    return obj


@dataclass(frozen=True)
class Figure:
    name: str
    alt: str
    b64: str


class _Figures:
    """Each plot is written next to report.html as a PNG and embedded in the page."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.by_name: dict[str, Figure] = {}

    def add(self, name: str, png: bytes, alt: str) -> None:
        (self.out / name).write_bytes(png)
        self.by_name[name] = Figure(name, alt, base64.b64encode(png).decode())


_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("kerbside.analysis", "templates"), autoescape=True,
                                undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def _side(zone_col: pd.Series, zone: str) -> pd.Series:
    return zone_col.map(lambda z: "inside" if z == zone else "outside")


# -- the sections ---------------------------------------------------------------------------------
def _means(hours: pd.DataFrame, spec: ReportSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Period means (mean of valid hours) with day-resampled 95 % intervals, per site and per side."""
    h = hours.dropna(subset=["period"])
    site_rows, side_rows = [], []
    for (site, side, period), g in h.groupby(["site", "side", "period"]):
        row: dict[str, Any] = {"site": site, "side": side, "period": period, "days": g["day"].nunique()}
        for p in POLLUTANTS:
            iv = intervals.day_block_mean(g.loc[g[f"{p}_valid"], p], g.loc[g[f"{p}_valid"], "day"], spec.n_boot // 2,
                                          spec.block_days)
            row[p] = iv
        site_rows.append(row)
    for (side, period), g in h.groupby(["side", "period"]):
        for p in POLLUTANTS:
            ok = g[g[f"{p}_valid"]]
            iv = intervals.day_block_mean(ok[p], ok["day"], spec.n_boot, spec.block_days)
            side_rows.append({"side": side, "period": period, "pollutant": p, "mean": iv.mean, "ci_low": iv.low,
                              "ci_high": iv.high, "days": iv.days, "hours": iv.n, "sites": ok["site"].nunique()})
    return pd.DataFrame(site_rows), pd.DataFrame(side_rows)


def _site_means_table(site_rows: pd.DataFrame, hours_in: dict[tuple[str, str], int]) -> pd.DataFrame:
    out = []
    for r in site_rows.sort_values(["side", "site", "period"], ascending=[True, True, False]).to_dict("records"):
        row = {"site": r["site"], "side": r["side"], "period": r["period"]}
        for p in POLLUTANTS:
            iv: intervals.Interval = r[p]
            row[f"{LABEL[p]} µg/m³"] = _fmt(iv.mean)
            row[f"{LABEL[p]} 95 % interval"] = f"{_fmt(iv.low)} – {_fmt(iv.high)}" if not math.isnan(iv.low) else "n/a"
            total = hours_in.get((r["site"], r["period"]), 0)
            row[f"{LABEL[p]} capture %"] = _fmt(100 * iv.n / total) if total else "n/a"
        out.append(row)
    return pd.DataFrame(out)


def _matrix(ex: pd.DataFrame, side: pd.Series) -> tuple[pd.DataFrame, list[dict]]:
    """Site x short-term limit: 'count of valid' per cell, n/a without a valid period, and the verdict."""
    ex = ex.assign(side=side)
    ex["limit_name"] = (ex["scheme"].map({"EU2030": "EU 2030", "WHO2021": "WHO 2021"}) + " " + ex["pollutant"].map(LABEL)
                        + " " + ex["averaging"] + " > " + ex["limit"].map(lambda v: f"{v:g}"))

    def cell(r: pd.Series) -> str:
        if r["verdict"] == "n/a":
            return "n/a"
        text = f"{r['count']} of {r['valid_periods']}"
        return text + (" (exceeded)" if r["verdict"] == "exceeded" else "")

    ex["cell"] = ex.apply(cell, axis=1)
    order = list(dict.fromkeys(ex["limit_name"]))
    wide = ex.pivot_table(index=["site", "side", "year"], columns="limit_name", values="cell", aggfunc="first")
    wide = wide.reindex(columns=order).reset_index()
    wide.columns.name = None
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in ex.drop(columns=["limit_name", "cell"]).to_dict("records")]
    return wide.sort_values(["side", "site"]), rows


def _traffic(client: Influx, spec: ReportSpec, rng: LocalRange, whole: set[date]) -> dict[str, Any]:
    """Before vs after per side, matched by weekday and hour: only weekday-hours seen in both periods count,
    each with equal weight, so a before period of Sundays and an after period of Thursdays cannot pose as a
    change. Without a weekday in common, working days and weekends are matched instead, and it is said."""
    try:
        tr = query.traffic_hourly(client, rng)
    except query.NoDataError:
        return {"note": "No traffic counts in the analysed range.", "table": None, "summary": {}, "profile": None}
    tr = tr[tr["day"].isin(whole)].copy()
    tr["period"] = [_period(d, spec) for d in tr["day"]]
    tr = tr.dropna(subset=["period"])
    if tr.empty:
        return {"note": "No traffic counts on whole days of the before and after periods.", "table": None,
                "summary": {}, "profile": None}
    tr["side"] = _side(tr["zone"], spec.zone)
    tr["weekday"] = tr["local_time"].dt.day_of_week
    tr["hour"] = tr["local_time"].dt.hour
    tr["daytype"] = np.where(tr["weekday"] < 5, "working day", "weekend")
    rows, profile, summary, notes = [], [], {}, []
    for side, g in tr.groupby("side"):
        label = ""
        for key, how in (("weekday", "weekday and hour"), ("daytype", "working day / weekend and hour")):
            label = how
            cells = g.groupby(["period", key, "hour", "site"]).agg(total=("total", "mean"), heavy=("heavy", "mean"))
            cells = cells.groupby(["period", key, "hour"]).mean().reset_index()  # sites equally weighted
            both = cells.groupby([key, "hour"])["period"].nunique()
            matched = both[both == 2].index
            if len(matched):
                break
        if not len(matched):
            notes.append(f"{side}: no hour of the day was counted in both periods; no traffic comparison.")
            continue
        cells = cells.set_index([key, "hour"]).loc[matched].reset_index()
        n_types = cells[key].nunique()
        shown = (", ".join(WEEKDAYS[int(d)] for d in sorted(cells[key].unique())) if key == "weekday"
                 else ", ".join(sorted(cells[key].unique())))
        if key == "daytype":
            notes.append(f"{side}: the periods share no weekday, so working days and weekends are matched instead.")
        for period, p in cells.groupby("period"):
            per_day = float(p["total"].sum()) / n_types
            share = 100 * float(p["heavy"].sum()) / float(p["total"].sum()) if p["total"].sum() else float("nan")
            rows.append({"side": side, "period": period, "matched on": label, "days compared": shown,
                         "vehicles per day per site": round(per_day), "heavy vehicles %": round(share, 2)})
            compared = (f"the same weekdays ({shown}) and hours" if key == "weekday"
                        else f"{shown}s only, hour by hour: the periods share no weekday")
            summary[f"{side}/{period}"] = {"vehicles_per_day": round(per_day, 1), "heavy_share_pct": round(share, 2),
                                           "matched_on": key, "days": shown, "compared": compared}
            prof = p.groupby("hour")["total"].mean().reset_index().assign(side=side, period=period)
            profile.append(prof)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(["side", "period"], ascending=[True, False])
    return {"note": " ".join(notes), "table": table if not table.empty else None, "summary": summary,
            "profile": pd.concat(profile, ignore_index=True) if profile else None}


def _quality(client: Influx, hours: pd.DataFrame, rng: LocalRange, period_s: int) -> dict[str, Any]:
    """Capture per node and day, readings expected vs taken vs stored, and the gaps."""
    e = 3600 / period_s
    cap = pd.DataFrame()
    if not hours.empty:
        hh = hours.assign(node=hours["device"] + " (" + hours["site"].astype(str) + ")")
        per = hh.groupby(["node", "day"])["capture_sum"].sum().unstack().reindex(columns=rng.days())
        n_h = pd.Series({d: LocalRange(d, d, rng.tz).hours() for d in rng.days()})
        cap = (100 * per.fillna(0) / (n_h * e)).clip(upper=100)
    flow = client.frame(f'SELECT capture_sum, interval FROM "agg"."traffic_flow_1h" WHERE {rng.where()} '
                        "AND direction = 'in' GROUP BY device, site")
    if not flow.empty:
        flow["day"] = flow["time"].dt.tz_convert(rng.tz).dt.date
        flow["node"] = flow["device"] + " (" + flow["site"].astype(str) + ")"
        per = flow.groupby(["node", "day"])["capture_sum"].sum().unstack().reindex(columns=rng.days())
        per_hour = flow.groupby("node")["interval"].median().rdiv(3600)
        n_h = pd.Series({d: LocalRange(d, d, rng.tz).hours() for d in rng.days()})
        tcap = (100 * per.fillna(0).div(per_hour, axis=0) / n_h).clip(upper=100)
        cap = pd.concat([cap, tcap])
    # Expected while the network ran: every reading interval from its first reading to its last (any node), so a
    # node that stopped early or started late shows it. Boot readings (one when a node's clock is first set) come
    # on top of the interval grid, so a node can have taken one reading more than expected per boot.
    stored = query.stored_readings(client, rng)
    gaps = query.gaps(client, rng)
    span = [client.frame(f'SELECT {fn}(seq) FROM "raw"."{m}" WHERE {rng.where()}')
            for fn in ("first", "last") for m in ("air", "traffic_flow")]
    starts = [f["time"].iloc[0] for f in span[:2] if not f.empty]
    ends = [f["time"].iloc[0] for f in span[2:] if not f.empty]
    acc = []
    if starts and ends:
        run_s = (max(ends) - min(starts)) / pd.Timedelta(seconds=1)
        missing = gaps.groupby("device")["missing"].sum() if not gaps.empty else pd.Series(dtype=float)
        intervals_s = flow.groupby("device")["interval"].median() if not flow.empty else pd.Series(dtype=float)
        for r in stored.to_dict("records"):
            step = period_s if r["kit"] == "air" else float(intervals_s.get(r["device"], 900))
            exp = int(run_s // step) + 1
            miss = int(missing.get(r["device"], 0))
            acc.append({"device": r["device"], "site": r["site"], "kit": r["kit"], "expected": exp,
                        "taken": int(r["stored"]) + miss, "stored": int(r["stored"]), "still missing": miss,
                        "stored %": round(100 * int(r["stored"]) / exp, 1) if exp else float("nan")})
    acc_df = pd.DataFrame(acc)
    unsynced: set[str] = set()
    for m in ("air_unsynced", "traffic_flow_unsynced"):
        try:
            series = client.query(f'SHOW TAG VALUES FROM "unsynced"."{m}" WITH KEY = "device"')
        except InfluxRefused:
            continue  # a database without kerbside's layout has no unsynced retention policy
        unsynced |= {row[1] for s in series for row in s.get("values", [])}
    return {"capture": cap, "accounting": acc_df, "gaps": gaps, "unsynced": sorted(unsynced)}


def _signed(x: float) -> str:
    text = f"{x:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def _headline(r: DidResult) -> str:
    p = LABEL[r.pollutant]
    size = f"{abs(r.estimate):.1f} µg/m³"
    ci = f"95 % interval {_signed(r.ci_low)} to {_signed(r.ci_high)} µg/m³"
    if r.ci_high < 0:
        return (f"{p} fell by about {size} more inside the zone than outside ({ci}). The interval lies wholly "
                "below zero: a real drop relative to outside, not day-to-day noise.")
    if r.ci_low > 0:
        return (f"{p} rose by about {size} more inside the zone than outside ({ci}). The interval lies wholly "
                "above zero.")
    return (f"{p}: no clear change inside the zone relative to outside (estimate {_signed(r.estimate)} µg/m³, {ci}; "
            "the interval includes zero).")


def _annual_note(rng: LocalRange, hours: pd.DataFrame) -> tuple[str, pd.DataFrame | None]:
    """Annual limits apply to calendar-year means with >= 90 % valid hours; compare only those."""
    rule = capture_rules().year_min_fraction
    annual = [x for x in limits() if x.averaging == "year"]
    values = ", ".join(f"{LABEL[x.pollutant]} {x.value:g}" for x in annual if x.scheme == "EU2030")
    years = [y for y in range(rng.first.year, rng.last.year + 1)
             if rng.first <= date(y, 1, 1) and rng.last >= date(y, 12, 31)]
    if not years:
        n = len(rng.days())
        return (f"Annual limit values (EU 2030: {values} µg/m³) apply to calendar-year means with ≥ {rule:.0%} valid "
                f"hours. This report covers {n} day{'s' if n != 1 else ''}, not a calendar year, so its period means "
                "are not compared with them."), None
    rows = []
    for y in years:
        yr = LocalRange(date(y, 1, 1), date(y, 12, 31), rng.tz)
        pm = query.period_means(hours[pd.to_datetime(hours["day"]).dt.year == y], yr)
        for r in pm.to_dict("records"):
            row = {"site": r["site"], "year": y}
            for p in POLLUTANTS:
                lim = limit("EU2030", p, "year")
                ok = bool(r[f"{p}_valid"])
                row[f"{LABEL[p]} mean"] = _fmt(r[p]) if ok else f"n/a (capture {100 * r[f'{p}_capture']:.0f} %)"
                row[f"{LABEL[p]} vs EU {lim.value:g}" if lim else LABEL[p]] = (
                    ("above" if r[p] > lim.value else "not above") if ok and lim else "not comparable")
            rows.append(row)
    return (f"Calendar-year means, compared with the annual limit values only where ≥ {rule:.0%} of the year's "
            "hours are valid."), pd.DataFrame(rows)


# -- the report -------------------------------------------------------------------------------------
def build(client: Influx, spec: ReportSpec, out: Path, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Render report.html, the PNGs and summary.json into `out`; returns the summary."""
    from kerbside.analysis import plots

    check_periods(spec.before, spec.after)
    if not (spec.rng.first < spec.before and spec.after <= spec.rng.last):
        raise ReportError(f"--before {spec.before} and --after {spec.after} must fall inside the analysed range "
                          f"{spec.rng.first} .. {spec.rng.last}, leaving days on both sides; adjust --from/--to")
    known = query.zones(client)
    if spec.zone not in known:
        raise ReportError(f"unknown zone {spec.zone!r}; zones in the data: {', '.join(sorted(known)) or 'none'}")
    progress("querying hourly means")
    all_hours = query.hourly(client, spec.rng, spec.period_s, calibrations=spec.calibrations)
    whole, partial = query.coverage(all_hours, spec.rng)
    missing: list[str] = []  # what the report could not do, said on the first page
    hours = all_hours[all_hours["day"].isin(set(whole))].copy()
    hours["period"] = [_period(d, spec) for d in hours["day"]]
    hours["side"] = _side(hours["zone"], spec.zone)
    days = query.daily(hours, spec.rng) if not hours.empty else pd.DataFrame(
        columns=["device", "site", "zone", "day", "hours_in_day"])
    if not days.empty:
        days = days[days["day"].isin(set(whole))].copy()
        days["period"] = [_period(d, spec) for d in days["day"]]
        days["side"] = _side(days["zone"], spec.zone)
    out.mkdir(parents=True, exist_ok=True)
    figs = _Figures(out)
    tables: dict[str, Markup | None] = {}
    summary: dict[str, Any] = {"zone": spec.zone, "before": str(spec.before), "after": str(spec.after),
                               "from": str(spec.rng.first), "to": str(spec.rng.last), "tz": spec.rng.tz,
                               "whole_days": len(whole), "partial_days": {str(d): why for d, why in partial.items()}}
    sites = hours[["site", "side"]].drop_duplicates() if not hours.empty else pd.DataFrame(columns=["site", "side"])
    n_in, n_out = int((sites["side"] == "inside").sum()), int((sites["side"] == "outside").sum())
    days_before = sorted({d for d in whole if _period(d, spec) == "before"})
    days_after = sorted({d for d in whole if _period(d, spec) == "after"})
    if not whole:
        missing.append("No whole day of data in the range: the network did not run from midnight to midnight on any day.")
    if n_in == 0:
        missing.append(f"No air-quality site inside zone “{spec.zone}” has data on whole days.")
    if n_out == 0:
        missing.append("No air-quality site outside the zone has data on whole days: nothing to compare with.")
    if whole and not days_before:
        missing.append(f"No whole day before {spec.before}.")
    if whole and not days_after:
        missing.append(f"No whole day from {spec.after} on.")

    # Means per site and side, with intervals
    progress("means with 95 % intervals")
    site_rows, side_rows = _means(hours, spec) if not hours.empty else (pd.DataFrame(), pd.DataFrame())
    hours_in: dict[tuple[str, str], int] = {}
    for period, ds in (("before", days_before), ("after", days_after)):
        n = sum(LocalRange(d, d, spec.rng.tz).hours() for d in ds)
        for s in sites["site"]:
            hours_in[(s, period)] = n
    tables["means"] = _table(_site_means_table(site_rows, hours_in)) if not site_rows.empty else None
    summary["means"] = {}
    for r in side_rows.to_dict("records") if not side_rows.empty else []:
        summary["means"].setdefault(f"{r['side']}/{r['period']}", {})[LABEL[r["pollutant"]]] = {
            "mean": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "days": r["days"], "hours": r["hours"]}
    side_table = None
    if not side_rows.empty:
        st = side_rows.copy()
        st["pollutant"] = st["pollutant"].map(LABEL)
        st["mean µg/m³"] = st["mean"].map(_fmt)
        st["95 % interval"] = [f"{_fmt(a)} – {_fmt(b)}" if not math.isnan(a) else "n/a"
                               for a, b in zip(st["ci_low"], st["ci_high"], strict=True)]
        st = st.rename(columns={"days": "days with valid hours", "hours": "valid hours"})
        side_table = st[["pollutant", "side", "period", "mean µg/m³", "95 % interval", "sites", "days with valid hours",
                         "valid hours"]]
        side_table = side_table.sort_values(["pollutant", "side", "period"], ascending=[True, True, False])
        tables["side_means"] = _table(side_table)
        for p in POLLUTANTS:
            figs.add(f"means_{p}.png", plots.period_means(side_rows[side_rows["pollutant"] == p], LABEL[p]),
                     f"{LABEL[p]} period means inside and outside the zone, before and after, with 95 % intervals")
    else:
        tables["side_means"] = None

    # Daily means (daily limits are the same averaging period, so they may be drawn)
    if not days.empty:
        ok = days[days["no2_valid"]]
        per_day = ok.groupby(["day", "side"])["no2"].mean().unstack() if not ok.empty else pd.DataFrame()
    else:
        per_day = pd.DataFrame()
    lim_day = limit("EU2030", "no2", "day")
    figs.add("no2_daily.png", plots.daily_sides(per_day, "NO2", spec.after, lim_day.value if lim_day else None),
             "Daily NO2 means inside and outside the zone (mean of the sites' valid daily means)")

    # Exceedances: site x limit matrix
    progress("exceedances")
    if not days.empty:
        ex = pd.concat([query.exceedances(hours, days, s, spec.rng) for s in ("EU2030", "WHO2021")], ignore_index=True)
        matrix, ex_rows = _matrix(ex, _side(ex["zone"], spec.zone))
        tables["matrix"] = _table(matrix)
        summary["exceedances"] = [r for r in ex_rows if r["scheme"] == "EU2030"]
        n_exceeded = int((ex["verdict"] == "exceeded").sum())
    else:
        tables["matrix"], summary["exceedances"], n_exceeded = None, [], 0
    annual_text, annual = _annual_note(spec.rng, hours) if not hours.empty else ("No data for annual means.", None)
    tables["annual"] = _table(annual) if annual is not None else None

    # Traffic
    progress("traffic")
    traffic = _traffic(client, spec, spec.rng, set(whole))
    tables["traffic"] = _table(traffic["table"]) if traffic["table"] is not None else None
    summary["traffic"] = traffic["summary"]
    if traffic["profile"] is not None:
        figs.add("traffic.png", plots.traffic_profile(traffic["profile"]),
                 "Vehicles per hour of day before and after, matched weekday-hours, inside and outside the zone")

    # Difference-in-differences
    progress("difference-in-differences (bootstrap)")
    results: list[DidResult] = []
    did_notes = []
    for p in POLLUTANTS:
        try:
            if days.empty:
                raise DidError(f"{p}: no valid daily means")
            results.append(did(days, p, spec.zone, spec.before, spec.after, spec.n_boot, spec.block_days))
        except DidError as e:
            did_notes.append(str(e))
    if results:
        tables["did"] = _table(pd.DataFrame([{
            "pollutant": LABEL[r.pollutant], "estimate µg/m³": r.estimate, "95 % low": r.ci_low, "95 % high": r.ci_high,
            "bootstrap SE": r.se, "gap before": r.before_gap, "gap after": r.after_gap, "days before": r.days_before,
            "days after": r.days_after} for r in results]))
    else:
        tables["did"] = None
    figs.add("did.png", plots.did_forest([{"label": LABEL[r.pollutant], "estimate": r.estimate, "ci_low": r.ci_low,
                                           "ci_high": r.ci_high}
                                          for r in sorted(results, key=lambda r: SUMMARY_ORDER.index(r.pollutant))]),
             "Change inside the zone relative to outside, with 95 % intervals")
    summary["did"] = {r.pollutant: {"estimate": r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high, "se": r.se,
                                    "before_gap": r.before_gap, "after_gap": r.after_gap, "days_before": r.days_before,
                                    "days_after": r.days_after, "n_boot": r.n_boot, "block_days": r.block_days}
                      for r in results}
    headlines = [_headline(r) for r in sorted(results, key=lambda r: SUMMARY_ORDER.index(r.pollutant))]
    if not results:
        missing.append("No before/after comparison could be estimated: " + "; ".join(did_notes))

    # Calibration
    cal_rows = calibration.describe(spec.calibrations)
    calibrated = sorted({d for d in spec.calibrations if d in set(hours.get("device", []))})
    tables["calibration"] = _table(pd.DataFrame(cal_rows)) if cal_rows else None
    summary["calibrated_devices"] = calibrated

    # Data quality
    progress("data quality")
    q = _quality(client, all_hours, spec.rng, spec.period_s)
    figs.add("capture.png", plots.capture_heatmap(q["capture"]), "Data capture per node and local day")
    acc = q["accounting"]
    tables["accounting"] = _table(acc) if not acc.empty else None
    totals = {k: int(acc[k].sum()) for k in ("expected", "taken", "stored", "still missing")} if not acc.empty else {}
    summary["readings"] = totals
    summary["unsynced_devices"] = q["unsynced"]
    g = q["gaps"]
    summary["gaps"] = {"count": len(g), "still_missing": int(g["missing"].sum()) if len(g) else 0}
    if not g.empty:
        gg = g.assign(start=g["local_time"].dt.strftime("%Y-%m-%d %H:%M")).sort_values("missing", ascending=False)
        tables["gaps"] = _table(gg[["device", "site", "start", "first_seq", "last_seq", "expected", "missing",
                                    "recovered"]].head(20))
    else:
        tables["gaps"] = None
    valid_share = {p: float(hours[f"{p}_valid"].mean()) if not hours.empty else float("nan") for p in POLLUTANTS}
    summary["valid_hours_pct"] = {LABEL[p]: round(100 * v, 1) if not math.isnan(v) else None for p, v in valid_share.items()}

    n_traffic = int(q["accounting"]["kit"].eq("traffic").sum()) if not acc.empty else 0
    facts = {
        "sites_inside": n_in, "sites_outside": n_out, "traffic_nodes": n_traffic,
        "days_before": len(days_before), "days_after": len(days_after),
        "first_before": days_before[0] if days_before else None, "last_after": days_after[-1] if days_after else None,
        "valid_no2_pct": summary["valid_hours_pct"]["NO2"], "exceeded": n_exceeded,
    }
    summary["missing"] = missing
    overview = []
    for p in SUMMARY_ORDER:
        row = {"pollutant": LABEL[p]}
        for r in side_rows[side_rows["pollutant"] == p].to_dict("records") if not side_rows.empty else []:
            ci = f" ({_fmt(r['ci_low'])}–{_fmt(r['ci_high'])})" if not math.isnan(r["ci_low"]) else ""
            row[f"{r['side']}/{r['period']}"] = _fmt(r["mean"]) + ci
        overview.append(row)
    page = _TEMPLATES.get_template("report.html").render(
        spec=spec, rules=capture_rules(), tables=tables, figures=figs.by_name, headlines=headlines, facts=facts,
        missing=missing, partial=partial, overview=overview, traffic=traffic, did_notes=did_notes,
        annual_text=annual_text, calibrated=calibrated, totals=totals,
        gaps={"count": len(g), "recovered": int(g["recovered"].sum()) if len(g) else 0, "shown": min(20, len(g))},
        unsynced=q["unsynced"], label=LABEL, fmt=_fmt)
    (out / "report.html").write_text(page)
    summary["pngs"] = list(figs.by_name)
    (out / "summary.json").write_text(json.dumps(_strict(summary), indent=2, allow_nan=False))
    return _strict(summary)
