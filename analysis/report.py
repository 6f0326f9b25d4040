"""The LEZ report: inside vs outside, before vs after, as one self-contained HTML file with PNG plots.

Periods: "before" is every day of the analysed range before --before; "after"
is every day from --after on; days in between (a phase-in) are left out. With
--before = --after = the LEZ start date the two periods simply meet.
The report also writes each plot as a PNG and the key numbers as summary.json
next to report.html, so figures can be reused and results checked by machine.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from kerbside.analysis import query
from kerbside.analysis.did import DidError, DidResult, check_periods, did
from kerbside.analysis.influx import Influx
from kerbside.analysis.limits import POLLUTANTS, capture_rules, limit
from kerbside.analysis.timerange import LocalRange
from kerbside.core.errors import AnalysisError

LABEL = {"pm25": "PM2.5", "pm10": "PM10", "no2": "NO2"}


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


def _period(day: date, spec: ReportSpec) -> str | None:
    return "before" if day < spec.before else "after" if day >= spec.after else None


def _fig_png(fig) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, border=0, classes="t", na_rep="–", float_format=lambda x: f"{x:.1f}")


def _side(zone_col: pd.Series, zone: str) -> pd.Series:
    return zone_col.map(lambda z: "inside" if z == zone else "outside")


class _Doc:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.parts: list[str] = []
        self.pngs: list[str] = []

    def h(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def p(self, text: str) -> None:
        self.parts.append(f"<p>{text}</p>")

    def raw(self, text: str) -> None:
        self.parts.append(text)

    def img(self, name: str, png: bytes, alt: str) -> None:
        (self.out / name).write_bytes(png)
        self.pngs.append(name)
        b64 = base64.b64encode(png).decode()
        self.parts.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'
                          f"<figcaption>{html.escape(alt)} ({name})</figcaption></figure>")


CSS = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
       "table.t{border-collapse:collapse;margin:1em 0}table.t td,table.t th{padding:2px 8px;border-bottom:1px solid #ddd;"
       "text-align:right}.warn{background:#fff3cd;padding:.6em 1em;border-left:4px solid #e0a800}img{max-width:100%}")


def build(client: Influx, spec: ReportSpec, out: Path, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Render report.html, the PNGs and summary.json into `out`; returns the summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_periods(spec.before, spec.after)
    if not (spec.rng.first < spec.before and spec.after <= spec.rng.last):
        raise ReportError(f"--before {spec.before} and --after {spec.after} must fall inside the analysed range "
                          f"{spec.rng.first} .. {spec.rng.last}, leaving days on both sides; adjust --from/--to")
    known = query.zones(client)
    if spec.zone not in known:
        raise ReportError(f"unknown zone {spec.zone!r}; zones in the data: {', '.join(sorted(known)) or 'none'}")
    progress("querying hourly means")
    hours = query.hourly(client, spec.rng, spec.period_s)
    days = query.daily(hours, spec.rng)
    sides = set(_side(days["zone"], spec.zone))
    if sides != {"inside", "outside"}:
        raise ReportError(f"need air sites both inside and outside zone {spec.zone!r} in the range; found only {sides}")
    out.mkdir(parents=True, exist_ok=True)
    doc = _Doc(out)
    summary: dict = {"zone": spec.zone, "before": str(spec.before), "after": str(spec.after),
                     "from": str(spec.rng.first), "to": str(spec.rng.last), "tz": spec.rng.tz}

    doc.raw(f"<h1>Low Emission Zone report: zone “{html.escape(spec.zone)}”</h1>")
    doc.p(f"Analysed range {spec.rng.first} to {spec.rng.last} (local days, {html.escape(spec.rng.tz)}). "
          f"<b>Before</b> = days before {spec.before}; <b>after</b> = days from {spec.after} on"
          + (f"; {spec.before} to the day before {spec.after} is a transition and left out." if spec.after > spec.before
             else "."))
    doc.raw('<p class="warn"><b>Indicative measurements.</b> These figures come from low-cost sensors (optical PM '
            "counters, electrochemical NO2 cells), not reference or equivalent methods under Directive 2024/2881. "
            "They can show differences and trends between comparable sites, but they cannot prove compliance or "
            "non-compliance with a limit value; absolute levels may be biased by humidity, temperature and sensor "
            "drift. Exceedance counts only include hours/days that meet the data-capture rules.</p>")

    # Means by site and period
    progress("means and exceedances")
    days["period"] = [_period(d, spec) for d in days["day"]]
    days["side"] = _side(days["zone"], spec.zone)
    rows = []
    for (site, side, period), g in days.dropna(subset=["period"]).groupby(["site", "side", "period"]):
        row: dict = {"site": site, "side": side, "period": period}
        for p in POLLUTANTS:
            ok = g[g[f"{p}_valid"]]
            row[LABEL[p]] = ok[p].mean() if len(ok) else float("nan")
            row[f"{LABEL[p]} capture %"] = 100 * g[f"{p}_hours"].sum() / g["hours_in_day"].sum()
        rows.append(row)
    means = pd.DataFrame(rows).sort_values(["side", "site", "period"], ascending=[True, True, False])
    doc.h("Mean concentrations (µg/m³) with data capture")
    doc.p(f"Mean of valid daily means; capture = valid hours / hours in the period (an hour is valid at ≥ "
          f"{capture_rules().hour_min_fraction:.0%} data capture, a day with ≥ {capture_rules().day_min_valid_hours} "
          f"valid hours). Annual means need ≥ {capture_rules().year_min_fraction:.0%} capture to count.")
    doc.raw(_table(means))
    grp = means.groupby(["side", "period"])[[LABEL[p] for p in POLLUTANTS]].mean()
    summary["means"] = {f"{s}/{p}": {k: round(float(v), 3) for k, v in r.items()} for (s, p), r in grp.iterrows()}
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
    for ax, p in zip(axes, POLLUTANTS, strict=True):
        t = grp[LABEL[p]].unstack("period").reindex(columns=["before", "after"])
        t.plot.bar(ax=ax, rot=0, color=["#999", "#2a7"])
        eu = limit("EU2030", p, "year")
        if eu:
            ax.axhline(eu.value, color="r", ls="--", lw=1, label=f"EU 2030 annual {eu.value:g}")
        ax.set_title(LABEL[p])
        ax.set_ylabel("µg/m³")
        ax.legend(fontsize=7)
    doc.img("means.png", _fig_png(fig), "Mean concentration inside vs outside, before vs after")

    # Daily NO2 series
    daily_side = days[days["no2_valid"]].groupby(["day", "side"])["no2"].mean().unstack()
    fig, ax = plt.subplots(figsize=(11, 3.5))
    daily_side.plot(ax=ax, marker=".")
    ax.axvline(spec.after, color="k", ls=":", label="after period starts")  # type: ignore[arg-type]  # matplotlib converts dates
    ax.set_ylabel("NO2 daily mean, µg/m³")
    ax.legend()
    fig.autofmt_xdate()
    doc.img("no2_daily.png", _fig_png(fig), "Daily NO2 means inside and outside the zone")

    # Exceedances
    ex = pd.concat([query.exceedances(hours, days, s) for s in ("EU2030", "WHO2021")], ignore_index=True)
    doc.h("Exceedances of short-term limits (per calendar year, valid periods only)")
    show = ex.assign(side=_side(ex["zone"], spec.zone))[["site", "side", "year", "scheme", "pollutant", "averaging",
                                                         "limit", "count", "allowed", "valid_periods", "breach"]]
    doc.raw(_table(show))
    summary["exceedances"] = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                              for r in show[show["scheme"] == "EU2030"].to_dict("records")]
    eu = show[show["scheme"] == "EU2030"].copy()
    eu["what"] = eu["pollutant"].map(LABEL) + " " + eu["averaging"] + " > " + eu["limit"].astype(int).astype(str)
    piv = eu.pivot_table(index="what", columns="site", values="count", aggfunc="sum")
    fig, ax = plt.subplots(figsize=(11, 3.5))
    piv.plot.bar(ax=ax, rot=0)
    for i, what in enumerate(piv.index):
        allowed = eu.loc[eu["what"] == what, "allowed"].iloc[0]
        ax.hlines(allowed, i - 0.4, i + 0.4, color="r", lw=2)
    ax.set_ylabel("exceedances (red: allowed per year)")
    doc.img("exceedances.png", _fig_png(fig), "EU 2030 exceedance counts per site against the allowed number")

    # Traffic
    progress("traffic")
    doc.h("Traffic volume and heavy-vehicle share")
    try:
        tr = query.traffic_hourly(client, spec.rng)
    except query.NoDataError:
        tr = pd.DataFrame()
        doc.p("No traffic counts in this range.")
    if not tr.empty:
        tr["period"] = [_period(d, spec) for d in tr["day"]]
        tr["side"] = _side(tr["zone"], spec.zone)
        t = tr.dropna(subset=["period"]).groupby(["side", "period"]).agg(
            vehicles_per_day=("total", "sum"), heavy=("heavy", "sum"),
            days=("day", "nunique"), sites=("site", "nunique")).reset_index()
        t["vehicles_per_day"] = t["vehicles_per_day"] / t["days"] / t["sites"]
        t["heavy_share_pct"] = 100 * t["heavy"] / (t["vehicles_per_day"] * t["days"] * t["sites"])
        t = t.drop(columns=["heavy"])
        doc.raw(_table(t))
        summary["traffic"] = {f"{r.side}/{r.period}": {"vehicles_per_day": round(float(r.vehicles_per_day), 1),
                                                        "heavy_share_pct": round(float(r.heavy_share_pct), 2)}
                              for r in t.itertuples()}
        per_day = tr.groupby(["day", "side"]).agg(total=("total", "sum"), heavy=("heavy", "sum"))
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.5))
        per_day["total"].unstack().plot(ax=a1, marker=".")
        a1.set_ylabel("vehicles per day")
        (100 * per_day["heavy"] / per_day["total"]).unstack().plot(ax=a2, marker=".")
        a2.set_ylabel("heavy vehicles, %")
        for a in (a1, a2):
            a.axvline(spec.after, color="k", ls=":")
        fig.autofmt_xdate()
        doc.img("traffic.png", _fig_png(fig), "Daily traffic volume and heavy-vehicle share")

    # DiD
    progress("difference-in-differences (bootstrap)")
    doc.h("Difference-in-differences estimate")
    doc.p("Estimate = (inside − outside, after) − (inside − outside, before), using each day's mean of valid daily "
          "means inside and outside the zone, on days with both. Negative means concentrations fell more inside "
          f"the zone. 95 % interval: bootstrap resampling blocks of {spec.block_days} day(s) with replacement within "
          f"each period ({spec.n_boot} resamples). Site-clustered standard errors are not used: with a handful of "
          "sites per side they are unreliable. The interval covers day-to-day variation only; it assumes inside and "
          "outside would have moved in parallel without the zone, and it does not cover sensor bias.")
    results: list[DidResult] = []
    notes = []
    for p in POLLUTANTS:
        try:
            results.append(did(days, p, spec.zone, spec.before, spec.after, spec.n_boot, spec.block_days))
        except DidError as e:
            notes.append(html.escape(str(e)))
    if results:
        dd = pd.DataFrame([{"pollutant": LABEL[r.pollutant], "DiD µg/m³": r.estimate, "95 % low": r.ci_low,
                            "95 % high": r.ci_high, "bootstrap SE": r.se, "gap before": r.before_gap,
                            "gap after": r.after_gap, "days before": r.days_before, "days after": r.days_after}
                           for r in results])
        doc.raw(_table(dd))
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.errorbar(dd["pollutant"], dd["DiD µg/m³"], yerr=[dd["DiD µg/m³"] - dd["95 % low"],
                    dd["95 % high"] - dd["DiD µg/m³"]], fmt="o", capsize=6)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("DiD, µg/m³ (95 % interval)")
        doc.img("did.png", _fig_png(fig), "Difference-in-differences estimates with 95 % bootstrap intervals")
    for n in notes:
        doc.p(f"Not estimated: {n}")
    summary["did"] = {r.pollutant: {k: v for k, v in asdict(r).items() if k != "pollutant"} for r in results}

    # Data quality
    progress("data quality")
    doc.h("Data quality: capture per node and gaps")
    cap = days.groupby(["device", "site", "side"]).agg(
        hours=("hours_in_day", "sum"), no2_hours=("no2_hours", "sum"), pm25_hours=("pm25_hours", "sum"),
        valid_no2_days=("no2_valid", "sum"), days=("day", "count")).reset_index()
    cap["NO2 capture %"] = 100 * cap["no2_hours"] / cap["hours"]
    cap["PM2.5 capture %"] = 100 * cap["pm25_hours"] / cap["hours"]
    cap = cap.drop(columns=["no2_hours", "pm25_hours"])
    doc.raw(_table(cap))
    summary["capture_pct"] = {r["device"]: round(float(r["NO2 capture %"]), 2) for r in cap.to_dict("records")}
    fig, ax = plt.subplots(figsize=(11, 3))
    days.pivot_table(index="day", columns="site", values="no2_capture").mul(100).plot(ax=ax)
    ax.axhline(100 * capture_rules().day_min_valid_hours / 24, color="r", ls="--", lw=1, label="18 of 24 h")
    ax.set_ylabel("valid NO2 hours, % of day")
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    doc.img("capture.png", _fig_png(fig), "Daily NO2 data capture per site")
    tc = query.traffic_capture(client, spec.rng)
    if not tc.empty:
        doc.p("Traffic nodes: capture = readings' capture summed / readings expected in the range.")
        doc.raw(_table(tc.assign(**{"capture %": 100 * tc["capture"]}).drop(columns=["capture"])))
        summary["traffic_capture_pct"] = {f"{r['device']}/{r['direction']}": round(100 * float(r["capture"]), 2)
                                          for r in tc.to_dict("records")}
    g = query.gaps(client, spec.rng)
    summary["gaps"] = {"count": len(g), "still_missing": int(g["missing"].sum()) if len(g) else 0}
    if g.empty:
        doc.p("No gaps recorded by the collector in this range.")
    else:
        doc.p(f"{len(g)} gaps recorded by the collector; {int(g['recovered'].sum())} fully recovered by late backfill.")
        gg = g.assign(start=g["local_time"].dt.strftime("%Y-%m-%d %H:%M"))
        doc.raw(_table(gg[["device", "site", "start", "first_seq", "last_seq", "expected", "missing", "recovered"]]))

    page = (f"<!doctype html><html lang='en'><meta charset='utf-8'><title>LEZ report {html.escape(spec.zone)}</title>"
            f"<style>{CSS}</style><body>{''.join(doc.parts)}</body></html>")
    (out / "report.html").write_text(page)
    summary["pngs"] = doc.pngs
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
