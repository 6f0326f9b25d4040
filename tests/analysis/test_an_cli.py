"""The analyst commands end to end through Typer, against the real influxd: exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from an_broker import Broker
from typer.testing import CliRunner

from kerbside.cli import app


@pytest.fixture(scope="module")
def run():  # type: ignore[no-untyped-def]
    """The real `kerbside` command: its one KerbsideError handler gives the exit codes and messages."""
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str]:
        r = runner.invoke(app, list(args))
        return r.exit_code, r.output

    return invoke


def test_help_teaches(run) -> None:  # type: ignore[no-untyped-def]
    code, out = run("report", "lez", "--help")
    assert code == 0 and "--before" in out and "BEFORE this" in out and "Example" in out
    code, out = run("db", "init", "--dry-run", "--db", "city", "--resample-for", "12h")
    assert code == 0
    assert 'CREATE RETENTION POLICY "unsynced" ON "city" DURATION INF' in out
    assert 'RESAMPLE EVERY 5m FOR 12h' in out and 'INTO "city"."agg"."air_1h"' in out


@pytest.mark.services
def test_db_init_and_backfill(run, influx) -> None:  # type: ignore[no-untyped-def]
    code, out = run("db", "init", "--influx", influx.url, "--db", influx.db)
    assert code == 0, out
    assert f"database {influx.db} ready" in out
    names = {r[0] for s in influx.query("SHOW CONTINUOUS QUERIES") if s["name"] == influx.db for r in s["values"]}
    assert names == {"air_1h", "traffic_1h", "traffic_flow_1h"}
    influx.write(["air,device=d1,site=s,zone=lez capture=1.0,no2=20.0,samples=6i,seq=1i 1775030400000000000",
                  "air,device=d1,site=s,zone=lez capture=1.0,no2=30.0,samples=6i,seq=2i 1775030460000000000"])
    code, out = run("db", "backfill", "--from", "2026-04-01", "--to", "2026-04-01", "--influx", influx.url, "--db", influx.db)
    assert code == 0, out
    assert "recomputed 1 hourly points" in out
    rows = influx.query('SELECT no2, readings FROM "agg"."air_1h"')
    assert rows[0]["values"][0][1:] == [25, 2]
    code, out = run("db", "backfill", "--from", "2026-05-01", "--to", "2026-05-02", "--influx", influx.url, "--db", influx.db)
    assert code == 0 and "nothing to recompute" in out
    code, out = run("db", "backfill", "--from", "2026-04-02", "--to", "2026-04-01", "--influx", influx.url, "--db", influx.db)
    assert code == 2 and "wrong way round" in out
    code, out = run("db", "backfill", "--from", "1st April", "--to", "2026-04-01", "--influx", influx.url, "--db", influx.db)
    assert code == 2 and "use YYYY-MM-DD" in out


def test_unreachable_influx(run) -> None:  # type: ignore[no-untyped-def]
    code, out = run("db", "init", "--influx", "http://127.0.0.1:9", "--db", "x")
    assert code == 2 and "cannot reach InfluxDB" in out


@pytest.mark.services
def test_report_cli(run, loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = ["--influx", loaded.client.url, "--db", loaded.client.db]
    code, out = run("report", "lez", "--zone", "lez", "--before", "2026-03-30", "--after", "2026-03-30",
                    "--out", str(tmp_path), "--bootstrap", "200", *base)
    assert code == 0, out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["from"] == "2026-03-16" and summary["to"] == "2026-04-12"  # defaults: the data span
    assert f"{summary['did']['no2']['estimate']:+.1f} µg/m³" in out
    code, out = run("report", "lez", "--zone", "LEZ", "--before", "2026-03-30", "--after", "2026-03-30", *base)
    assert code == 2 and "unknown zone 'LEZ'" in out
    code, out = run("report", "lez", "--zone", "lez", "--before", "2026-03-30", "--after", "2026-03-30",
                    "--from", "2025-01-01", "--to", "2025-02-01", *base)
    assert code == 2 and "must fall inside" in out


@pytest.mark.services
def test_export_ngsi_ld_cli(run, loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = ["--influx", loaded.client.url, "--db", loaded.client.db]
    with Broker() as broker:
        code, out = run("export", "ngsi-ld", "--registry", str(loaded.registry), "--out", str(tmp_path),
                        "--broker", broker.url, *base)
    assert code == 0, out
    air = json.loads((tmp_path / "AirQualityObserved.jsonld").read_text())
    assert len(air) == 4 and air[0]["dateObserved"]["value"]["@value"] == "2026-04-12T21:00:00Z"  # default: last day
    history = json.loads((tmp_path / "AirQualityObserved.temporal.jsonld").read_text())
    assert [len(e["no2"]) for e in history] == [24] * 4
    assert f"sent {sum(len(b) for b in broker.batches) + len(broker.temporal)} entities" in out
    assert "wrote " in out and "Device.jsonld (6 entities)" in out
    code, out = run("export", "ngsi-ld", "--registry", str(tmp_path / "none.json"), *base)
    assert code == 2 and "missing or empty" in out


@pytest.mark.services
def test_export_csv_and_parquet(run, loaded, sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    import pandas as pd

    base = ["--influx", loaded.client.url, "--db", loaded.client.db, "--from", "2026-03-20", "--to", "2026-03-21"]
    code, out = run("export", "csv", "--out", str(tmp_path / "csv"), *base)
    assert code == 0, out
    code, out = run("export", "parquet", "--out", str(tmp_path / "pq"), *base)
    assert code == 0, out
    assert "hourly-sites.parquet (185 rows)" in out  # 4 devices x 48 h, less out-park's 7 hours without a reading
    for name in ("hourly-sites", "daily-sites", "hourly-zones", "daily-zones"):
        c = pd.read_csv(tmp_path / "csv" / f"{name}.csv")
        p = pd.read_parquet(tmp_path / "pq" / f"{name}.parquet")
        assert len(c) == len(p) > 0 and list(c.columns) == list(p.columns)
        assert ("no2_valid" if name.endswith("sites") else "no2_sites") in c and "no2" in c
    hs = pd.read_parquet(tmp_path / "pq" / "hourly-sites.parquet")
    assert hs["no2_valid"].dtype == bool and not hs["no2_calibrated"].any()
    m = sim.minutes
    one = m[(m["device"] == "a1000003") & (m["time"].dt.floor("h") == pd.Timestamp("2026-03-20T08:00Z"))]
    row = hs[(hs["device"] == "a1000003") & (hs["time"] == "2026-03-20T08:00:00Z")].iloc[0]
    assert row["no2"] == pytest.approx(one["no2"].mean(), abs=1e-9) and row["capture"] == 1.0
    ds = pd.read_csv(tmp_path / "csv" / "daily-sites.csv")
    park = ds[(ds["device"] == "a1000004") & (ds["day"] == "2026-03-20")].iloc[0]
    assert park["no2_hours"] == 17 and not park["no2_valid"]  # the injected 7-hour gap: an invalid day, flagged
    dz = pd.read_csv(tmp_path / "csv" / "daily-zones.csv").set_index(["zone", "day"])
    outside = ds[(ds["zone"] == "outside") & (ds["day"] == "2026-03-20") & ds["no2_valid"]]
    assert dz.loc[("outside", "2026-03-20"), "no2_sites"] == 1 == len(outside)  # out-park's invalid day left out
    assert dz.loc[("outside", "2026-03-20"), "no2"] == pytest.approx(outside["no2"].mean(), abs=1e-3)
    assert np.isclose(dz.loc[("outside", "2026-03-20"), "sites"], 2)


@pytest.mark.services
def test_recipes_cli(run, loaded) -> None:  # type: ignore[no-untyped-def]
    code, out = run("recipes", "--influx", loaded.client.url, "--db", loaded.client.db, "--after", "2026-03-30")
    assert code == 0, out
    port = loaded.client.url.rsplit(":", 1)[1]
    assert f"influx -host 127.0.0.1 -port {port} -database an_month -execute" in out
    assert "site = 'lez-market'" in out and "time >= '2026-03-16T00:00:00+01:00'" in out
    assert "time >= '2026-03-30T00:00:00+02:00'" in out and "time < '2026-04-13T00:00:00+02:00'" in out
    assert f'Influx("{loaded.client.url}", "an_month")' in out and "{" not in out.replace("{}", "")


def test_calibrate_cli_errors(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ref = tmp_path / "ref.csv"
    ref.write_text("timestamp,pollutant,value\n2026-03-02T00:00:00Z,NO2,abc\n")
    code, out = run("calibrate", "--reference", str(ref), "--device", "a1", "--influx", "http://127.0.0.1:9")
    assert code == 2 and "1 bad line(s), nothing used: line 2: value 'abc' is not a number" in out
    code, out = run("calibrate", "--reference", str(tmp_path / "none.csv"), "--device", "a1")
    assert code == 2 and "cannot read the reference series" in out
