"""The LEZ report rendered from the simulated month: files, the first page's summary, and the numbers recomputed
independently from the raw minutes; a report from thin data says what is missing instead of crashing."""

from __future__ import annotations

import base64
import json
import re
from datetime import date, timedelta
from pathlib import Path

import an_sim
import numpy as np
import pandas as pd
import pytest

from kerbside.analysis.report import ReportError, ReportSpec, build
from kerbside.analysis.schema import Layout, backfill, init_db
from kerbside.analysis.timerange import LocalRange

pytestmark = pytest.mark.services  # the real influxd

PNG = b"\x89PNG\r\n\x1a\n"
NAMES = ["means_pm25.png", "means_pm10.png", "means_no2.png", "no2_daily.png", "traffic.png", "did.png", "capture.png"]


def _strict(text: str) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"summary.json holds {name}: not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def rendered(loaded, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("lez")
    spec = ReportSpec("lez", an_sim.LEZ_START, an_sim.LEZ_START, loaded.rng, n_boot=400)
    return out, build(loaded.client, spec, out)


def _valid_hours(sim: an_sim.Sim) -> pd.DataFrame:
    m = sim.minutes.assign(hour=sim.minutes["time"].dt.floor("h"))
    h = m.groupby(["device", "hour"]).agg(no2=("no2", "mean"), n=("no2", "count"), cap=("capture", "sum"))
    h = h[np.minimum(h["cap"], h["n"]) / 60 >= 0.75].reset_index()
    h["day"] = h["hour"].dt.tz_convert(an_sim.TZ).dt.date
    return h


def test_files_and_embedded_pngs(rendered: tuple[Path, dict]) -> None:
    out, summary = rendered
    assert summary["pngs"] == NAMES
    page = (out / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(NAMES)
    by_data = {base64.b64decode(b) for b in embedded}
    for name in NAMES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000 and data in by_data
    assert _strict((out / "summary.json").read_text())["zone"] == "lez"


def test_first_page_says_what_changed(rendered: tuple[Path, dict]) -> None:
    out, summary = rendered
    page = (out / "report.html").read_text()
    first = page[page.index('<section class="summary">'):page.index("</section>")]
    no2 = summary["did"]["no2"]
    assert no2["ci_low"] <= an_sim.TRUE_DID <= no2["ci_high"]  # the interval covers the injected effect (-12)
    assert no2["ci_high"] < 0
    assert (f"NO2 fell by about {abs(no2['estimate']):.1f} µg/m³ more inside the zone than outside "
            f"(95 % interval {no2['ci_low']:+.1f} to {no2['ci_high']:+.1f} µg/m³)") in first
    assert first.index("NO2 fell") < first.index("PM2.5")  # NO2 leads
    assert "Comparing <b>14 days before 2026-03-30</b> with <b>14 days from 2026-03-30 on</b>" in first
    assert "2 air-quality sites inside the zone and 2 outside, with 2 traffic counters" in first
    assert "Indicative measurements." in first and "cannot prove that a limit value is met" in first
    assert "not calibrated against a reference station" in first
    assert "did.png" in first and "What this report could not do" not in first
    inside_before = summary["means"]["inside/before"]["NO2"]
    assert f"{inside_before['mean']:.1f} ({inside_before['ci_low']:.1f}–{inside_before['ci_high']:.1f})" in first


def test_period_mean_is_the_mean_of_valid_hours_with_an_interval(rendered: tuple[Path, dict], sim: an_sim.Sim) -> None:
    _, summary = rendered
    h = _valid_hours(sim)
    for side, devs in (("inside", ["a1000001", "a1000002"]), ("outside", ["a1000003", "a1000004"])):
        for period, sel in (("before", h["day"] < an_sim.LEZ_START), ("after", h["day"] >= an_sim.LEZ_START)):
            v = h[sel & h["device"].isin(devs)]
            got = summary["means"][f"{side}/{period}"]["NO2"]
            assert got["mean"] == pytest.approx(v["no2"].mean(), abs=1e-9)
            assert got["hours"] == len(v) and got["days"] == 14
            assert got["ci_low"] < got["mean"] < got["ci_high"]


def test_matrix_and_annual_limits(rendered: tuple[Path, dict]) -> None:
    out, summary = rendered
    page = (out / "report.html").read_text()
    rows = {(r["site"], r["pollutant"], r["averaging"]): r for r in summary["exceedances"]}
    assert rows[("out-ring", "pm10", "day")]["count"] == 3 and rows[("out-ring", "pm10", "day")]["verdict"] == "open"
    assert rows[("lez-station", "no2", "hour")]["count"] == 2
    assert rows[("lez-market", "no2", "hour")]["count"] == 0 and rows[("lez-market", "no2", "hour")]["breach"] is None
    assert rows[("out-park", "pm10", "day")]["valid_periods"] == 27  # one day with 17 valid hours
    assert "3 of 28" in page and "22 of 28 (exceeded)" in page  # WHO NO2 daily 25 at lez-market, 4 allowed
    assert "This report covers 28 days, not a calendar year, so its period means are not compared with them" in page


def test_traffic_matched_by_weekday_and_hour(rendered: tuple[Path, dict], sim: an_sim.Sim) -> None:
    _, summary = rendered
    t = sim.traffic
    lt = t["time"].dt.tz_convert(an_sim.TZ)
    after = np.array([d >= an_sim.LEZ_START for d in lt.dt.date])
    inside = (t["zone"] == "lez").to_numpy()
    for period, mask in (("after", inside & after), ("before", inside & ~after)):
        sel = t[mask]
        got = summary["traffic"][f"inside/{period}"]
        assert got["matched_on"] == "weekday" and got["days"] == "Mon, Tue, Wed, Thu, Fri, Sat, Sun"
        assert got["compared"] == "the same weekdays (Mon, Tue, Wed, Thu, Fri, Sat, Sun) and hours"
        share = 100 * sel.loc[sel["cls"] == "heavy", "count"].sum() / sel["count"].sum()
        assert got["heavy_share_pct"] == pytest.approx(share, abs=0.05)
        assert got["vehicles_per_day"] == pytest.approx(sel["count"].sum() / 14, rel=0.01)
    assert summary["traffic"]["inside/after"]["heavy_share_pct"] < summary["traffic"]["inside/before"]["heavy_share_pct"] / 2


def test_data_quality(rendered: tuple[Path, dict], sim: an_sim.Sim) -> None:
    out, summary = rendered
    page = (out / "report.html").read_text()
    assert summary["gaps"] == {"count": 2, "still_missing": 420}
    assert "2 gaps recorded by the collector; 1 fully recovered" in page
    expected_air = 4 * 671 * 60
    stored_air = len(sim.minutes)
    assert summary["readings"]["stored"] == stored_air + len(sim.flow[sim.flow["direction"] == "in"])
    assert summary["readings"]["still missing"] == 420
    assert summary["readings"]["expected"] == expected_air + 2 * 671 * 4
    assert summary["readings"]["taken"] == summary["readings"]["stored"] + 420


def test_the_same_weekdays_are_not_there_then_day_types_are_matched(loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Mon-Tue before, Wed-Thu after share no weekday: working days are matched with working days, and it is said."""
    rng = LocalRange(date(2026, 3, 16), date(2026, 3, 19), an_sim.TZ)
    summary = build(loaded.client, ReportSpec("lez", date(2026, 3, 18), date(2026, 3, 18), rng, n_boot=200),
                    tmp_path)
    got = summary["traffic"]["inside/before"]
    assert got["matched_on"] == "daytype" and got["days"] == "working day"
    page = (tmp_path / "report.html").read_text()
    assert "the periods share no weekday, so working days and weekends are matched instead" in page


@pytest.mark.parametrize(("zone", "before", "after", "message"), [
    ("nowhere", an_sim.LEZ_START, an_sim.LEZ_START, "unknown zone 'nowhere'; zones in the data: lez, outside"),
    ("lez", date(2026, 4, 2), date(2026, 3, 30), "wrong way round"),
    ("lez", date(2026, 3, 1), date(2026, 3, 30), "must fall inside the analysed range"),
])
def test_bad_input(loaded, tmp_path: Path, zone: str, before: date, after: date, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=re.escape(message)):
        build(loaded.client, ReportSpec(zone, before, after, loaded.rng), tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_no_data_range(loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from kerbside.analysis.query import NoDataError

    rng = LocalRange(date(2025, 6, 1), date(2025, 6, 30), an_sim.TZ)
    with pytest.raises(NoDataError, match="no hourly air aggregates"):
        build(loaded.client, ReportSpec("lez", date(2025, 6, 10), date(2025, 6, 10), rng), tmp_path)
    assert issubclass(ReportError, ValueError)


def test_thin_data_gives_a_report_that_says_what_is_missing(influxd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Six hours of data on one afternoon, two sites: no whole day, no valid daily mean, nothing to estimate."""
    from kerbside.analysis.influx import Influx

    client = Influx(influxd.url, "an_thin")
    client.query('DROP DATABASE "an_thin"', post=True)
    init_db(client, Layout("an_thin", raw_duration="INF"))
    t0 = an_sim.local(date(2026, 5, 5), 12)
    lines = []
    for i, (dev, site, zone) in enumerate((("t1", "in-a", "lez"), ("t2", "out-a", "outside"))):
        for k in range(6 * 60):
            ns = (t0 + timedelta(minutes=k)).value
            lines.append(f"air,device={dev},kit=air,site={site},zone={zone} capture=1.0,no2={20 + i}.5,pm25=8.0,pm10=15.0,"
                         f"samples=6i,seq={k}i {ns}")
    client.write(lines)
    rng = LocalRange(date(2026, 5, 4), date(2026, 5, 6), an_sim.TZ)
    backfill(client, rng.start, rng.end)
    try:
        summary = build(client, ReportSpec("lez", date(2026, 5, 5), date(2026, 5, 5), rng, n_boot=200), tmp_path)
    finally:
        client.query('DROP DATABASE "an_thin"', post=True)
    page = (tmp_path / "report.html").read_text()
    assert "What this report could not do" in page
    assert "No whole day of data in the range" in page and summary["whole_days"] == 0
    assert summary["partial_days"] == {"2026-05-04": "no data", "2026-05-05": "data from 12:00 only",
                                       "2026-05-06": "no data"}
    assert summary["did"] == {} and "No before/after comparison could be estimated" in page
    assert "No valid daily or hourly mean in the range" in page
    _strict((tmp_path / "summary.json").read_text())
    assert (tmp_path / "capture.png").read_bytes().startswith(PNG)


def test_first_page_in_a_browser(rendered: tuple[Path, dict], tmp_path: Path) -> None:
    """Chromium shows the summary on the first screen (the headline's blue bar), and prints it as a page of its own."""
    import chromium
    from matplotlib.image import imread

    out, _ = rendered
    png = tmp_path / "first.png"
    chromium.screenshot(out / "report.html", png)
    img = imread(png)
    assert img.shape[:2] == (chromium.WINDOW[1], chromium.WINDOW[0])
    blue = np.all(np.abs(img[:, :, :3] - np.array([0, 114, 178]) / 255) < 0.02, axis=2)
    rows = np.nonzero(blue.any(axis=1))[0]
    assert len(rows) > 50 and rows.min() < 400  # the headline's bar, near the top of the page
    chromium.pdf(out / "report.html", tmp_path / "report.pdf")
    pages = (tmp_path / "report.pdf").read_bytes().count(b"/Type /Page\n") or \
        len(re.findall(rb"/Type\s*/Page[^s]", (tmp_path / "report.pdf").read_bytes()))
    assert pages >= 3
