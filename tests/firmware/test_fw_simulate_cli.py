"""`kerbside simulate`: a short real run against mosquitto, the registry it writes, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kerbside.cli import app
from kerbside.core.registry import Registry
from kerbside.simulator.city import inside

runner = CliRunner()


@pytest.mark.services
def test_simulate_runs_a_small_fleet_and_registers_it(mosquitto, tmp_path: Path) -> None:
    reg = tmp_path / "registry.json"
    r = runner.invoke(app, ["simulate", "--broker", mosquitto.url, "--air", "2", "--traffic", "2", "--duration", "1800",
                            "--speedup", "600", "--period", "60", "--sample", "30", "--registry", str(reg),
                            "--state-dir", str(tmp_path / "flash"), "--seed", "3", "--broken-sensor", "1"])
    assert r.exit_code == 0, r.output
    assert "per node" in r.output
    devices = Registry(reg).load()
    assert len(devices) == 4
    assert sorted(d.kit for d in devices.values()) == ["air", "air", "traffic", "traffic"]
    for d in devices.values():
        assert d.zone == ("lez" if inside(d.lon, d.lat) else "outside")
    assert {d.zone for d in devices.values()} == {"lez", "outside"}
    assert sorted(p.name for p in (tmp_path / "flash").iterdir()) == sorted(devices)


@pytest.mark.parametrize(("args", "message"), [
    (["--broker", "http://127.0.0.1:1"], "broker URL must look like"),
    (["--sample", "7"], "--sample must divide --period"),
    (["--nodes", "0"], "no nodes"),
    (["--start", "yesterday"], "not an ISO date"),
    (["--broker-down", "10-20"], "START+LENGTH"),
])
def test_simulate_rejects_bad_options_clearly(args: list[str], message: str, tmp_path: Path) -> None:
    r = runner.invoke(app, ["simulate", "--state-dir", str(tmp_path), *args])
    assert r.exit_code == 2
    assert message in r.output.replace("\n", " ").replace("│", " ") or message in " ".join(r.output.split())
