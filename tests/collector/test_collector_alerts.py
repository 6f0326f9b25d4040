"""The shipped alerting rules, by Prometheus's own promtool: they load, and they fire when and only when meant."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from kerbside.collector.fleet_web import METRICS
from kerbside.devstack import require

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "collector" / "deploy" / "kerbside-alerts.yml"
JOB = {"job": "kerbside-collector", "instance": "127.0.0.1:9108"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("promtool", "prometheus"), *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_rules_and_they_use_only_metrics_the_collector_has() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 12 rules found" in r.stdout
    used = set(re.findall(r"\bkerbside_[a-z_]+", RULES.read_text()))
    # docs/collector.md's table is every metric the collector has (test_collector_metrics holds it to the code)
    table = (ROOT / "docs" / "collector.md").read_text().split("### Metrics", 1)[1]
    names = set(re.findall(r"`(kerbside_[a-z_]+)", table))
    assert {m for m, _, _ in METRICS} <= names
    assert used <= names, f"the rules name metrics the collector does not have: {sorted(used - names)}"


def _series(name: str, values: str) -> dict[str, str]:
    labels = ",".join(f'{k}="{v}"' for k, v in JOB.items())
    return {"series": f"{name}{{{labels}}}", "values": values}


def _description(alert: str) -> str:
    m = re.search(rf"alert: {alert}\n.*?description: \"(.*?)\"\n", RULES.read_text(), re.S)
    assert m, alert
    return m.group(1)


def test_the_fleet_alerts_fire_after_their_delay_and_not_before(tmp_path: Path) -> None:
    """One node goes offline at minute 2 of a 10-node fleet, three more at minute 40; one drops readings from
    minute 5; the collector stops answering at minute 60. promtool replays it minute by minute."""
    def alert(name: str, severity: str, summary: str, **extra: str) -> dict:
        return {"exp_labels": {**JOB, "severity": severity, **extra},
                "exp_annotations": {"summary": summary, "description": _description(name)}}

    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                _series("kerbside_nodes_registered", "10x90"),
                _series("kerbside_nodes_offline", "0 0 1x37 4x50"),
                _series("kerbside_nodes_dropping", "0x4 2x85"),
                _series("up", "1x60 0x30"),
            ],
            "alert_rule_test": [
                {"eval_time": "31m", "alertname": "KerbsideNodesOffline", "exp_alerts": []},  # 29 min offline
                {"eval_time": "33m", "alertname": "KerbsideNodesOffline",
                 "exp_alerts": [alert("KerbsideNodesOffline", "warning", "1 kerbside nodes offline for 30 minutes")]},
                {"eval_time": "45m", "alertname": "KerbsideManyNodesOffline", "exp_alerts": []},  # 40 %, for 5 min
                {"eval_time": "51m", "alertname": "KerbsideManyNodesOffline",
                 "exp_alerts": [alert("KerbsideManyNodesOffline", "critical", "40% of the kerbside fleet is offline")]},
                {"eval_time": "4m", "alertname": "KerbsideNodesDroppingReadings", "exp_alerts": []},
                {"eval_time": "11m", "alertname": "KerbsideNodesDroppingReadings",
                 "exp_alerts": [alert("KerbsideNodesDroppingReadings", "warning",
                                      "2 kerbside nodes dropped readings: their buffer was full")]},
                {"eval_time": "64m", "alertname": "KerbsideCollectorDown", "exp_alerts": []},
                {"eval_time": "66m", "alertname": "KerbsideCollectorDown",
                 "exp_alerts": [alert("KerbsideCollectorDown", "critical", "the kerbside collector does not answer /metrics")]},
            ],
        }],
    }
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(json.dumps(tests))  # JSON is YAML
    r = promtool("test", "rules", str(spec))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    # and a wrong expectation fails: the test above can fail
    tests["tests"][0]["alert_rule_test"][0]["exp_alerts"] = [alert("KerbsideNodesOffline", "warning", "x")]
    spec.write_text(json.dumps(tests))
    assert promtool("test", "rules", str(spec)).returncode != 0
