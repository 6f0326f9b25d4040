"""The LEZ report: inside vs outside, before vs after, as one self-contained HTML file with PNG plots.

Periods: "before" is every day of the analysed range before --before; "after"
is every day from --after on; days in between (a phase-in) are left out. With
--before = --after = the LEZ start date the two periods simply meet.
The report also writes each plot as a PNG and the key numbers as summary.json
next to report.html, so figures can be reused and results checked by machine.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup

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


def _table(df: pd.DataFrame) -> Markup:
    """pandas escapes the cells; the template takes the table as it is."""
    return Markup(df.to_html(index=False, border=0, classes="t", na_rep="–", float_format=lambda x: f"{x:.1f}"))


def _side(zone_col: pd.Series, zone: str) -> pd.Series:
    return zone_col.map(lambda z: "inside" if z == zone else "outside")


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
    figs = _Figures(out)
    tables: dict[str, Markup | None] = {"traffic": None, "did": None, "traffic_capture": None, "gaps": None}
    summary: dict = {"zone": spec.zone, "before": str(spec.before), "after": str(spec.after),
                     "from": str(spec.rng.first), "to": str(spec.rng.last), "tz": spec.rng.tz}

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
    tables["means"] = _table(means)
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
    figs.add("means.png", _fig_png(fig), "Mean concentration inside vs outside, before vs after")

    # Daily NO2 series
    daily_side = days[days["no2_valid"]].groupby(["day", "side"])["no2"].mean().unstack()
    fig, ax = plt.subplots(figsize=(11, 3.5))
    daily_side.plot(ax=ax, marker=".")
    ax.axvline(spec.after, color="k", ls=":", label="after period starts")  # type: ignore[arg-type]  # matplotlib converts dates
    ax.set_ylabel("NO2 daily mean, µg/m³")
    ax.legend()
    fig.autofmt_xdate()
    figs.add("no2_daily.png", _fig_png(fig), "Daily NO2 means inside and outside the zone")

    # Exceedances
    ex = pd.concat([query.exceedances(hours, days, s) for s in ("EU2030", "WHO2021")], ignore_index=True)
    show = ex.assign(side=_side(ex["zone"], spec.zone))[["site", "side", "year", "scheme", "pollutant", "averaging",
                                                         "limit", "count", "allowed", "valid_periods", "breach"]]
    tables["exceedances"] = _table(show)
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
    figs.add("exceedances.png", _fig_png(fig), "EU 2030 exceedance counts per site against the allowed number")

    # Traffic
    progress("traffic")
    no_traffic = False
    try:
        tr = query.traffic_hourly(client, spec.rng)
    except query.NoDataError:
        tr = pd.DataFrame()
        no_traffic = True
    if not tr.empty:
        tr["period"] = [_period(d, spec) for d in tr["day"]]
        tr["side"] = _side(tr["zone"], spec.zone)
        t = tr.dropna(subset=["period"]).groupby(["side", "period"]).agg(
            vehicles_per_day=("total", "sum"), heavy=("heavy", "sum"),
            days=("day", "nunique"), sites=("site", "nunique")).reset_index()
        t["vehicles_per_day"] = t["vehicles_per_day"] / t["days"] / t["sites"]
        t["heavy_share_pct"] = 100 * t["heavy"] / (t["vehicles_per_day"] * t["days"] * t["sites"])
        t = t.drop(columns=["heavy"])
        tables["traffic"] = _table(t)
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
        figs.add("traffic.png", _fig_png(fig), "Daily traffic volume and heavy-vehicle share")

    # DiD
    progress("difference-in-differences (bootstrap)")
    results: list[DidResult] = []
    notes = []
    for p in POLLUTANTS:
        try:
            results.append(did(days, p, spec.zone, spec.before, spec.after, spec.n_boot, spec.block_days))
        except DidError as e:
            notes.append(str(e))
    if results:
        dd = pd.DataFrame([{"pollutant": LABEL[r.pollutant], "DiD µg/m³": r.estimate, "95 % low": r.ci_low,
                            "95 % high": r.ci_high, "bootstrap SE": r.se, "gap before": r.before_gap,
                            "gap after": r.after_gap, "days before": r.days_before, "days after": r.days_after}
                           for r in results])
        tables["did"] = _table(dd)
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.errorbar(dd["pollutant"], dd["DiD µg/m³"], yerr=[dd["DiD µg/m³"] - dd["95 % low"],
                    dd["95 % high"] - dd["DiD µg/m³"]], fmt="o", capsize=6)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("DiD, µg/m³ (95 % interval)")
        figs.add("did.png", _fig_png(fig), "Difference-in-differences estimates with 95 % bootstrap intervals")
    summary["did"] = {r.pollutant: {k: v for k, v in asdict(r).items() if k != "pollutant"} for r in results}

    # Data quality
    progress("data quality")
    cap = days.groupby(["device", "site", "side"]).agg(
        hours=("hours_in_day", "sum"), no2_hours=("no2_hours", "sum"), pm25_hours=("pm25_hours", "sum"),
        valid_no2_days=("no2_valid", "sum"), days=("day", "count")).reset_index()
    cap["NO2 capture %"] = 100 * cap["no2_hours"] / cap["hours"]
    cap["PM2.5 capture %"] = 100 * cap["pm25_hours"] / cap["hours"]
    cap = cap.drop(columns=["no2_hours", "pm25_hours"])
    tables["capture"] = _table(cap)
    summary["capture_pct"] = {r["device"]: round(float(r["NO2 capture %"]), 2) for r in cap.to_dict("records")}
    fig, ax = plt.subplots(figsize=(11, 3))
    days.pivot_table(index="day", columns="site", values="no2_capture").mul(100).plot(ax=ax)
    ax.axhline(100 * capture_rules().day_min_valid_hours / 24, color="r", ls="--", lw=1, label="18 of 24 h")
    ax.set_ylabel("valid NO2 hours, % of day")
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    figs.add("capture.png", _fig_png(fig), "Daily NO2 data capture per site")
    tc = query.traffic_capture(client, spec.rng)
    if not tc.empty:
        tables["traffic_capture"] = _table(tc.assign(**{"capture %": 100 * tc["capture"]}).drop(columns=["capture"]))
        summary["traffic_capture_pct"] = {f"{r['device']}/{r['direction']}": round(100 * float(r["capture"]), 2)
                                          for r in tc.to_dict("records")}
    g = query.gaps(client, spec.rng)
    summary["gaps"] = {"count": len(g), "still_missing": int(g["missing"].sum()) if len(g) else 0}
    if not g.empty:
        gg = g.assign(start=g["local_time"].dt.strftime("%Y-%m-%d %H:%M"))
        tables["gaps"] = _table(gg[["device", "site", "start", "first_seq", "last_seq", "expected", "missing", "recovered"]])

    page = _TEMPLATES.get_template("report.html").render(
        spec=spec, rules=capture_rules(), tables=tables, figures=figs.by_name, no_traffic=no_traffic,
        did_notes=notes, gaps={"count": len(g), "recovered": int(g["recovered"].sum()) if len(g) else 0})
    (out / "report.html").write_text(page)
    summary["pngs"] = list(figs.by_name)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
