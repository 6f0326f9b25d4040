"""Calibration against a simulated reference station: the real fleet's co-located nodes have sensor errors the
simulator knows (conftest.SENSORS); `kerbside calibrate` must find them, store them, and queries must use them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SENSORS
from typer.testing import CliRunner

from kerbside.analysis import calibration, query
from kerbside.cli import app
from kerbside.core.registry import Registry
from kerbside.simulator.reference import RH0, T0

pytestmark = pytest.mark.services  # the real fleet, broker, collector and influxd

GAIN_TOL = 0.02
"""Recovered gain within 2 % of the simulator's (relative)."""
OFFSET_TOL = 1.5
"""Recovered offset within 1.5 µg/m³ of the simulator's (at RH 50 %, 20 °C)."""


def recovered(c: calibration.Coefficients) -> dict[str, float]:
    """Invert reference = a + b*sensor + c*RH + d*T for sensor = g*truth + o + r*(RH-50) + t*(T-20)."""
    g = 1 / c.slope
    r, t = -c.rh * g, -c.temp * g
    return {"gain": g, "offset": -c.intercept * g + RH0 * r + T0 * t, "rh": r, "temp": t}


@pytest.fixture(scope="module")
def calibrated(fleet_run, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    reg = tmp_path_factory.mktemp("cal") / "registry.json"
    reg.write_bytes(fleet_run.registry.read_bytes())
    devices = [a for d in fleet_run.colocated for a in ("--device", d)]
    r = CliRunner().invoke(app, ["calibrate", "--reference", str(fleet_run.reference), *devices, "--influx",
                                 fleet_run.client.url, "--db", fleet_run.client.db, "--registry", str(reg)])
    assert r.exit_code == 0, r.output
    return reg, r.output


def test_every_reading_arrived(fleet_run) -> None:  # type: ignore[no-untyped-def]
    assert all(s.produced == s.expected for s in fleet_run.stats)
    held = fleet_run.client.query('SELECT count("seq") FROM "air"')[0]["values"][0][1]
    assert held == sum(s.produced for s in fleet_run.stats if s.kit == "air")


def test_calibration_recovers_the_simulated_sensor_errors(fleet_run, calibrated) -> None:  # type: ignore[no-untyped-def]
    reg, out = calibrated
    cal = calibration.load(reg)
    assert sorted(cal) == sorted(fleet_run.colocated)
    for dev, truth in zip(fleet_run.colocated, SENSORS, strict=True):
        by = {c.pollutant: c for c in cal[dev]}
        assert sorted(by) == ["no2", "pm10", "pm25"]
        for p, err in truth.items():
            got = recovered(by[p])
            assert got["gain"] == pytest.approx(err.gain, rel=GAIN_TOL), (dev, p, got)
            assert got["offset"] == pytest.approx(err.offset, abs=OFFSET_TOL), (dev, p, got)
            c = by[p]
            assert c.hours == 96 and c.r2 > 0.98 and abs(c.bias) < 1e-6 and c.meets_dqo, c
            assert c.valid_from == "2026-03-01T23:00:00+00:00" and c.valid_to is None
    assert "stored 6 calibration(s)" in out


def test_queries_use_calibrated_values_and_say_so(fleet_run, calibrated) -> None:  # type: ignore[no-untyped-def]
    reg, _ = calibrated
    cal = calibration.load(reg)
    hours = query.hourly(fleet_run.client, fleet_run.rng, calibrations=cal)
    ref = calibration.read_reference(fleet_run.reference)
    for dev in fleet_run.colocated:
        mine = hours[hours["device"] == dev]
        assert mine["no2_calibrated"].all() and mine["pm25_calibrated"].all()
        both = mine.merge(ref[ref["pollutant"] == "no2"], on="time")
        raw_err = float(np.sqrt(np.mean((both["no2_raw"] - both["value"]) ** 2)))
        cal_err = float(np.sqrt(np.mean((both["no2"] - both["value"]) ** 2)))
        assert cal_err < 1.0 < 3.0 < raw_err, (dev, raw_err, cal_err)  # the errors in SENSORS are several µg/m³
    others = hours[~hours["device"].isin(fleet_run.colocated)]
    assert not others["no2_calibrated"].any() and (others["no2"] == others["no2_raw"]).all()


def test_a_new_calibration_closes_the_previous_one(fleet_run, calibrated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg = tmp_path / "registry.json"
    reg.write_bytes(calibrated[0].read_bytes())
    dev = fleet_run.colocated[0]
    r = CliRunner().invoke(app, ["calibrate", "--reference", str(fleet_run.reference), "--device", dev,
                                 "--valid-from", "2026-03-04", "--influx", fleet_run.client.url, "--db",
                                 fleet_run.client.db, "--registry", str(reg)])
    assert r.exit_code == 0, r.output
    cs = [c for c in Registry(reg).load()[dev].calibrations if c["pollutant"] == "no2"]
    assert [(c["valid_from"], c["valid_to"]) for c in cs] == [
        ("2026-03-01T23:00:00+00:00", "2026-03-03T23:00:00+00:00"), ("2026-03-03T23:00:00+00:00", None)]


def test_reference_csv_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "ref.csv"
    bad.write_text("timestamp,pollutant,value\n2026-03-02T00:00:00,NO2,20\n2026-03-02T01:00:00Z,O3,20\n"
                   "2026-03-02T02:00:00Z,NO2,abc\n2026-03-02T03:00:00Z,PM2.5,\n")
    with pytest.raises(calibration.CalibrationError, match=r"3 bad line\(s\), nothing used: line 2: .* no UTC offset"):
        calibration.read_reference(bad)
    ok = tmp_path / "ok.csv"
    ok.write_text("timestamp,pollutant,value,unit\n2026-03-02T01:00:00+01:00,8,20.5,µg/m3\n"
                  "2026-03-02T01:00:00+01:00,6001,9,ug/m3\n2026-03-02T02:00:00+01:00,PM10,,µg/m3\n")
    df = calibration.read_reference(ok, "end")
    assert list(df["pollutant"]) == ["no2", "pm25"] and df["time"].iloc[0] == pd.Timestamp("2026-03-01T23:00Z")
    (tmp_path / "h.csv").write_text("when,what,value\n2026-03-02T01:00:00Z,NO2,3\n")
    with pytest.raises(calibration.CalibrationError, match="must name timestamp, pollutant and value"):
        calibration.read_reference(tmp_path / "h.csv")
