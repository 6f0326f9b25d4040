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
def test_export_cli(run, loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = ["--influx", loaded.client.url, "--db", loaded.client.db]
    with Broker() as broker:
        code, out = run("export", "ngsi-ld", "--registry", str(loaded.registry), "--out", str(tmp_path),
                        "--broker", broker.url, *base)
    assert code == 0, out
    air = json.loads((tmp_path / "AirQualityObserved.jsonld").read_text())
    assert len(air) == 4 * 24 and air[0]["dateObserved"]["value"]["@value"].startswith("2026-04-1")  # default: last day
    assert f"upserted {sum(len(b) for b in broker.batches)} entities" in out
    code, out = run("export", "ngsi-ld", "--registry", str(tmp_path / "none.json"), *base)
    assert code == 2 and "missing or empty" in out
