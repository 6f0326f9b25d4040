"""The LEZ report's template (analysis/templates/report.html) on its own: autoescaped text, tables as pandas wrote them."""

from __future__ import annotations

from datetime import date

from markupsafe import Markup

from kerbside.analysis.limits import capture_rules
from kerbside.analysis.report import _TEMPLATES, Figure, ReportSpec
from kerbside.analysis.timerange import LocalRange


def _render(**over: object) -> str:
    spec = ReportSpec('<script>"zone"</script>', date(2026, 3, 10), date(2026, 3, 12),
                      LocalRange(date(2026, 3, 1), date(2026, 3, 31), "Europe/Vienna"))
    figures = {n: Figure(n, f"plot <{n}>", "AAAA") for n in ("means.png", "no2_daily.png", "exceedances.png", "capture.png")}
    ctx = {"spec": spec, "rules": capture_rules(), "figures": figures, "no_traffic": True, "did_notes": ["too few <days>"],
           "gaps": {"count": 0, "recovered": 0},
           "tables": {"means": Markup("<table class='t'><tr><td>1.0</td></tr></table>"), "exceedances": Markup("<table/>"),
                      "traffic": None, "did": None, "capture": Markup("<table/>"), "traffic_capture": None,
                      "gaps": Markup("<table id='gaps'/>")}}
    ctx.update(over)
    return _TEMPLATES.get_template("report.html").render(**ctx)


def test_text_is_escaped_and_tables_are_not() -> None:
    page = _render()
    assert "<script>" not in page and "&lt;script&gt;&#34;zone&#34;&lt;/script&gt;" in page
    assert "Not estimated: too few &lt;days&gt;" in page
    assert 'alt="plot &lt;means.png&gt;" src="data:image/png;base64,AAAA"' in page
    assert "<table class='t'><tr><td>1.0</td></tr></table>" in page


def test_sections_follow_the_data() -> None:
    page = _render()
    assert "No traffic counts in this range." in page and "traffic.png" not in page
    assert "2026-03-10 to the day before 2026-03-12 is a transition and left out." in page
    assert "No gaps recorded by the collector in this range." in page
    assert "an hour is valid at ≥ 75% data capture" in page
    page = _render(gaps={"count": 2, "recovered": 1}, no_traffic=False)
    assert "2 gaps recorded by the collector; 1 fully recovered by late backfill." in page
    assert "No traffic counts" not in page
