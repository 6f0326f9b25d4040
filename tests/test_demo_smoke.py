"""`make demo` in miniature: real brokers, collector and simulated fleet, a broker outage, nothing lost."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.services


def test_demo_runs_end_to_end_and_loses_nothing(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "kerbside", "demo", "--days", "2", "--air", "3", "--traffic", "1",
                        "--speedup", "9000", "--no-keep", "--state", str(tmp_path / "state"), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=400, env={**os.environ, "COLUMNS": "200"})
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-3000:]
    assert "broker stopped for" in out, "the broker outage was injected"
    m = re.search(r"([\d,]+) readings taken by the nodes, ([\d,]+) distinct readings in InfluxDB: nothing lost", out)
    assert m, out[-3000:]
    taken, held = (int(x.replace(",", "")) for x in m.groups())
    assert taken == held and taken >= 4 * 2 * 1440 * 0.95
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
    assert "LEZ report:" in out and "Query the data yourself" in out
