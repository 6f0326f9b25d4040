"""The InfluxQL in docs/analysts.md runs on InfluxDB 1.6 and agrees with the Python API on the simulated month."""

from __future__ import annotations

import re
from pathlib import Path

import an_sim
import pytest

from kerbside.analysis import query

pytestmark = pytest.mark.services  # the real influxd

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysts.md"


@pytest.fixture(scope="module")
def blocks() -> list[str]:
    found = re.findall(r"```sql\n(.*?)\n```", DOC.read_text(), re.S)
    assert len(found) == 6
    return found


def _by_tag(series: list[dict], tag: str) -> dict[str, list]:
    return {s["tags"][tag]: s["values"] for s in series}


def test_doc_queries(loaded, blocks: list[str]) -> None:  # type: ignore[no-untyped-def]
    c = loaded.client
    hourly_rows = c.query(blocks[0])[0]["values"]
    assert len(hourly_rows) == 23  # 11:00 local had 44 of 60 readings: filtered out by the 75 % rule
    assert [r[2] for r in hourly_rows].count(45) == 1
    assert _by_tag(c.query(blocks[1]), "site") == {"out-ring": [[0, 3]]}
    assert _by_tag(c.query(blocks[2]), "site")["lez-station"][0][1] == 2
    zones = {k: v[0] for k, v in _by_tag(c.query(blocks[3]), "zone").items()}
    hours = query.hourly(c, loaded.rng)
    after = hours[hours["no2_valid"] & (hours["day"] >= an_sim.LEZ_START)]
    for zone, row in zones.items():
        sel = after[after["zone"] == zone]["no2"]
        assert row[1] == pytest.approx(sel.mean(), rel=1e-9) and row[2] == len(sel)
    heavy = _by_tag(c.query(blocks[4]), "site")
    assert set(heavy) == {"lez-market", "out-ring"} and len(heavy["lez-market"]) == 7
    gaps = c.query(blocks[5])[0]["values"]
    assert [r[1:] for r in gaps] == [["a1000004", "out-park", gaps[0][3], gaps[0][3] + 419, 420]]
