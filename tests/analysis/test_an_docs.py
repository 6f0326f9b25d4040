"""docs/analysts.md shows exactly the recipes `kerbside recipes` fills in, and, filled in, they run on InfluxDB 1.x and
agree with the Python API on the simulated month; the count recipes tell "no exceedance" from "no data"."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import an_sim
import pytest

from kerbside.analysis import query, recipes
from kerbside.analysis.timerange import LocalRange

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysts.md"


def test_the_guide_shows_the_recipes_verbatim() -> None:
    text = DOC.read_text()
    sql = re.findall(r"```sql\n(.*?)\n```", text, re.S)
    assert sql == [r.text for r in recipes.RECIPES]
    assert f"```python\n{recipes.PYTHON.text}\n```" in text
    assert "![The report's first page](report-first-page.png)" in text
    assert (DOC.parent / "report-first-page.png").read_bytes().startswith(b"\x89PNG")


@pytest.fixture(scope="module")
def filled(loaded) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return recipes.values(loaded.client.url, loaded.client.db, loaded.rng, "lez-market", "lez", an_sim.LEZ_START)


def _by_tag(series: list[dict], tag: str) -> dict[str, list]:
    return {s["tags"][tag]: s["values"] for s in series}


@pytest.mark.services  # the real influxd
def test_filled_recipes_answer_as_the_python_api(loaded, filled: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    c = loaded.client
    run = [[c.query(stmt) for stmt in recipes.fill(r, filled).split("; ")] for r in recipes.RECIPES]
    assert "{" not in " ".join(recipes.fill(r, filled) for r in recipes.RECIPES)
    hourly_rows = run[0][0][0]["values"]
    assert len(hourly_rows) == 24  # lez-market's first day, every hour valid
    valid_days, over = (_by_tag(s, "site") for s in run[1])
    hours = query.hourly(c, loaded.rng)
    days = query.daily(hours, loaded.rng)
    ok = days[days["pm10_valid"]]
    assert {k: v[0][1] for k, v in valid_days.items()} == ok.groupby("site")["pm10"].count().to_dict()
    assert {k: v[0][1] for k, v in over.items()} == {"out-ring": 3}  # the three sites with none: in valid_days only
    valid_hours, over200 = (_by_tag(s, "site") for s in run[2])
    assert valid_hours["lez-station"][0][1] == int(hours.loc[hours["site"] == "lez-station", "no2_valid"].sum())
    assert over200 == {"lez-station": over200["lez-station"]} and over200["lez-station"][0][1] == 2
    zones = {k: v[0] for k, v in _by_tag(run[3][0], "zone").items()}
    after = hours[hours["no2_valid"] & (hours["day"] >= an_sim.LEZ_START)]
    for zone, row in zones.items():
        sel = after[after["zone"] == zone]["no2"]
        assert row[1] == pytest.approx(sel.mean(), rel=1e-9) and row[2] == len(sel)
    heavy = _by_tag(run[4][0], "site")
    assert set(heavy) == {"lez-market", "out-ring"} and len(heavy["lez-market"]) == 28
    gaps = run[5][0][0]["values"]
    assert [r[1:] for r in gaps] == [["a1000004", "out-park", gaps[0][3], gaps[0][3] + 419, 420]]


@pytest.mark.services
def test_a_printed_command_line_runs_in_the_influx_cli(loaded, filled: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("influx") is None:
        pytest.fail("the influx CLI is missing: `make test` installs it (influxdb-client)")
    line = recipes.shell(recipes.fill(recipes.RECIPES[1], filled), filled)
    p = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "valid_days" in p.stdout and "days_over_45" in p.stdout and "out-ring" in p.stdout


def test_recipes_fill_every_placeholder() -> None:
    vals = recipes.values("http://127.0.0.1:18086", "kerbside",
                          LocalRange(an_sim.FIRST, an_sim.LAST, an_sim.TZ), "lez-market", "lez", an_sim.LEZ_START)
    text = "\n".join(recipes.lines(vals))
    assert "{" not in text.replace("{}", "") and "-port 18086 -database kerbside" in text
    assert "'2026-03-16T00:00:00+01:00'" in text and "'2026-04-13T00:00:00+02:00'" in text
    assert "'2026-03-30T00:00:00+02:00'" in text and 'LocalRange(date.fromisoformat("2026-03-16")' in text
