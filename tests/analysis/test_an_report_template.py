"""The LEZ report's template (analysis/templates/report.html) on its own: autoescaped text, tables as pandas wrote them,
sections that follow the data (no process)."""

from __future__ import annotations

from datetime import date

from markupsafe import Markup

from kerbside.analysis.limits import capture_rules
from kerbside.analysis.report import _TEMPLATES, LABEL, Figure, ReportSpec, _fmt
from kerbside.analysis.timerange import LocalRange


def _render(**over: object) -> str:
    spec = ReportSpec('<script>"zone"</script>', date(2026, 3, 10), date(2026, 3, 12),
                      LocalRange(date(2026, 3, 1), date(2026, 3, 31), "Europe/Vienna"))
    figures = {n: Figure(n, f"plot <{n}>", "AAAA") for n in ("did.png", "no2_daily.png", "capture.png")}
    tables = {k: None for k in ("means", "side_means", "matrix", "annual", "traffic", "did", "calibration", "accounting",
                                "gaps")}
    tables["matrix"] = Markup("<table class='t'><tr><td>1.0</td></tr></table>")
    ctx = {"spec": spec, "rules": capture_rules(), "figures": figures, "tables": tables,
           "headlines": ["NO2 fell by about 3.0 µg/m³ <more>"],
           "facts": {"sites_inside": 1, "sites_outside": 2, "traffic_nodes": 0, "days_before": 9, "days_after": 19,
                     "valid_no2_pct": 97.0},
           "missing": [], "partial": {}, "overview": [{"pollutant": "NO2", "inside/before": "30.0 (29.0–31.0)"}],
           "traffic": {"note": "No traffic counts in the analysed range.", "summary": {}, "table": None},
           "did_notes": ["too few <days>"], "annual_text": "not a calendar year", "calibrated": [], "totals": {},
           "gaps": {"count": 0, "recovered": 0, "shown": 0}, "label": LABEL, "fmt": _fmt, "unsynced": []}
    ctx.update(over)
    return _TEMPLATES.get_template("report.html").render(**ctx)


def test_text_is_escaped_and_tables_are_not() -> None:
    page = _render()
    assert "<script>" not in page and "&lt;script&gt;&#34;zone&#34;&lt;/script&gt;" in page
    assert "Not estimated: too few &lt;days&gt;" in page and "NO2 fell by about 3.0 µg/m³ &lt;more&gt;" in page
    assert 'alt="plot &lt;did.png&gt;" src="data:image/png;base64,AAAA"' in page
    assert "<table class='t'><tr><td>1.0</td></tr></table>" in page


def test_sections_follow_the_data() -> None:
    page = _render()
    first = page[:page.index("</section>")]
    assert "Comparing <b>9 days before 2026-03-10</b> with <b>19 days from 2026-03-12 on</b>" in first
    assert "at 1 air-quality site inside the zone and 2 outside." in first
    assert "<td>30.0 (29.0–31.0)</td><td>n/a</td>" in first
    assert "No traffic counts in the analysed range." in page and "traffic.png" not in page
    assert "2026-03-10 to the day before 2026-03-12 is a transition and left out." in page
    assert "No gaps recorded by the collector in this range." in page
    assert "An hour is valid at ≥ 75% data capture" in page
    assert "No valid hour on whole days: no period mean." in page
    assert "What this report could not do" not in page
    page = _render(gaps={"count": 30, "recovered": 1, "shown": 20}, missing=["No whole day <of> data."],
                   partial={date(2026, 3, 1): "data from 14:00 only"}, calibrated=["a1", "b2"], unsynced=["0a0b0c0d"])
    first = page[:page.index("</section>")]
    assert "30 gaps recorded by the collector; 1 fully recovered by late backfill. The 20 largest:" in page
    assert "<li>No whole day &lt;of&gt; data.</li>" in first
    assert "Partial days left out: 2026-03-01 (data from 14:00 only)." in first
    assert "(2 of them calibrated against a reference station)" in first
    assert "Calibrated values</b> are used for a1, b2" in page
    assert "Readings of 1 node (0a0b0c0d) were taken before the node's clock was set" in page
