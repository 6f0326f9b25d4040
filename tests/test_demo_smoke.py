"""`make demo` in miniature: real brokers, collector and simulated fleet, a broker outage, nothing lost; the report's
summary is strict JSON, the printed recipes name the demo's port, and SIGTERM to `demo --keep` stops every service."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.services


def _services_of(root: Path, exclude: int) -> dict[int, str]:
    """Processes (not `exclude`) whose command line or environment names `root`: the demo's influxd, mosquitto, collector."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == exclude:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (d / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmd or str(root) in env:
            found[int(d.name)] = cmd.strip()
    return found


def test_demo_runs_end_to_end_loses_nothing_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        p = subprocess.Popen([sys.executable, "-m", "kerbside", "demo", "--days", "2", "--air", "3", "--traffic", "1",
                              "--speedup", "9000", "--keep", "--state", str(tmp_path / "state"), "--out",
                              str(tmp_path / "out")], stdout=out, stderr=subprocess.STDOUT,
                             env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 400
        while "stay up for you to explore" not in log.read_text() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        text = log.read_text()
        assert "stay up for you to explore" in text, text[-3000:]
        fleet_url = re.search(r"the fleet page:\s+(http://127\.0\.0\.1:\d+/fleet)", text)
        assert fleet_url, text[-3000:]
        with urllib.request.urlopen(fleet_url.group(1), timeout=30) as r:  # the page the demo points to is there
            assert r.status == 200 and b"<title>kerbside fleet</title>" in r.read()
        services = _services_of(tmp_path, p.pid)
        kinds = " ".join(services.values())
        assert "influxd" in kinds and "mosquitto" in kinds and "kerbside collect" in kinds, services
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=90) == 130
    finally:
        if p.poll() is None:
            p.kill()
    out = log.read_text()
    assert "stopping (SIGTERM)" in out
    assert {pid for pid in services if Path(f"/proc/{pid}").exists()} == set(), "services left running after SIGTERM"
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
    json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    port = re.search(r"InfluxDB http://127\.0\.0\.1:(\d+)", out).group(1)  # type: ignore[union-attr]
    assert "LEZ report:" in out and "Query the data yourself" in out
    assert f"influx -host 127.0.0.1 -port {port} -database kerbside -execute" in out
    assert f"kerbside recipes --influx http://127.0.0.1:{port} --db kerbside" in out
    assert "{" not in out[out.index("Query the data yourself"):].replace("{}", "")
