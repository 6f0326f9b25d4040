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
    m = re.search(r"readings: ([\d,]+) expected \(([\d,]+) intervals \+ ([\d,]+) boot readings\), "
                  r"([\d,]+) taken, ([\d,]+) stored: every reading due was taken and stored", out)
    assert m, out[-3000:]
    expected, intervals, boots, taken, stored = (int(x.replace(",", "")) for x in m.groups())
    assert expected == taken == stored == intervals + boots
    # 4 nodes x 2 days of minutes, less the minute (or two) each of the 2 power cuts interrupts;
    # a boot reading for each power-on that set its clock: 3 nodes (one never syncs) + 2 after power cuts
    assert 4 * 2 * 1440 - 4 <= intervals <= 4 * 2 * 1440 - 2
    assert boots == 5
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
    assert "LEZ report:" in out and "Query the data yourself" in out
