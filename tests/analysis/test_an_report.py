"""The LEZ report rendered from the simulated month: files exist and hold the numbers computed independently."""

from __future__ import annotations

import base64
import json
import re
from datetime import date
from pathlib import Path

import an_sim
import numpy as np
import pytest

from kerbside.analysis.report import ReportError, ReportSpec, build
from kerbside.analysis.timerange import LocalRange

pytestmark = pytest.mark.services  # the real influxd

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rendered(loaded, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("lez")
    spec = ReportSpec("lez", an_sim.LEZ_START, an_sim.LEZ_START, loaded.rng, n_boot=400)
    return out, build(loaded.client, spec, out)


def test_files_and_embedded_pngs(rendered: tuple[Path, dict]) -> None:
    out, summary = rendered
    names = ["means.png", "no2_daily.png", "exceedances.png", "traffic.png", "did.png", "capture.png"]
    assert summary["pngs"] == names
    page = (out / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(names)
    for name, b64 in zip(names, embedded, strict=True):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
        assert base64.b64decode(b64) == data
    assert json.loads((out / "summary.json").read_text())["zone"] == "lez"


def test_html_holds_the_numbers(rendered: tuple[Path, dict], sim: an_sim.Sim) -> None:
    out, summary = rendered
    page = (out / "report.html").read_text()
    assert "Indicative measurements" in page and "not reference" in page
    no2 = summary["did"]["no2"]
    assert f"{no2['estimate']:.1f}" in page and f"{no2['ci_low']:.1f}" in page and f"{no2['ci_high']:.1f}" in page
    assert abs(no2["estimate"] - an_sim.TRUE_DID) < 2.0 and no2["ci_high"] < 0
    # Inside/before NO2 mean: mean of valid daily means of the LEZ sites before the start, recomputed from raw.
    m = sim.minutes.assign(hour=sim.minutes["time"].dt.floor("h"))
    h = m.groupby(["device", "hour"]).agg(no2=("no2", "mean"), n=("no2", "count"), cap=("capture", "sum"))
    h = h[np.minimum(h["cap"], h["n"]) / 60 >= 0.75].reset_index()
    h["day"] = h["hour"].dt.tz_convert(an_sim.TZ).dt.date
    d = h.groupby(["device", "day"])["no2"].agg(["mean", "count"]).reset_index()
    d = d[(d["count"] >= 18) & d["device"].isin(["a1000001", "a1000002"]) & (d["day"] < an_sim.LEZ_START)]
    site_means = d.groupby("device")["mean"].mean()
    assert summary["means"]["inside/before"]["NO2"] == pytest.approx(site_means.mean(), abs=1e-3)
    for v in site_means:
        assert f"{v:.1f}" in page
    # Exceedance table rows and the data-quality section.
    assert summary["gaps"] == {"count": 2, "still_missing": 420}
    assert "420" in page and "2 gaps recorded" in page
    assert summary["traffic_capture_pct"]["b1000002/out"] == pytest.approx(100 * (671 * 4 - 4) / (671 * 4), abs=0.01)
    rows = {(r["site"], r["pollutant"], r["averaging"]): r["count"] for r in summary["exceedances"]}
    assert rows[("out-ring", "pm10", "day")] == 3 and rows[("lez-station", "no2", "hour")] == 2
    assert summary["capture_pct"]["a1000004"] == pytest.approx(100 * (671 - 7) / 671, abs=0.01)


def test_traffic_summary(rendered: tuple[Path, dict], sim: an_sim.Sim) -> None:
    _, summary = rendered
    t = sim.traffic
    after = np.array([d >= an_sim.LEZ_START for d in t["time"].dt.tz_convert(an_sim.TZ).dt.date])
    inside = (t["zone"] == "lez").to_numpy()
    for side, period, mask in (("inside", "after", inside & after), ("inside", "before", inside & ~after)):
        sel = t[mask]
        share = 100 * sel.loc[sel["cls"] == "heavy", "count"].sum() / sel["count"].sum()
        assert summary["traffic"][f"{side}/{period}"]["heavy_share_pct"] == pytest.approx(share, abs=0.01)
        assert summary["traffic"][f"{side}/{period}"]["vehicles_per_day"] == pytest.approx(sel["count"].sum() / 14, abs=0.1)
    assert summary["traffic"]["inside/after"]["heavy_share_pct"] < summary["traffic"]["inside/before"]["heavy_share_pct"] / 2


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
