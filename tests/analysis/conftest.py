"""Analyst-test fixtures: one simulated month loaded once into a database laid out by `db init`, and a small real
fleet (firmware on simulated hardware, real broker, collector and InfluxDB) beside a simulated reference station."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import an_sim

from kerbside.analysis.calibration import write_reference
from kerbside.analysis.influx import Influx
from kerbside.analysis.schema import Layout, backfill, init_db
from kerbside.analysis.timerange import LocalRange
from kerbside.core.registry import Device, Registry
from kerbside.devstack import CollectorProcess
from kerbside.simulator.fleet import Fleet, FleetConfig
from kerbside.simulator.reference import ReferenceStation, SensorError


@dataclass
class Loaded:
    client: Influx
    sim: an_sim.Sim
    rng: LocalRange
    registry: Path


@pytest.fixture(scope="session")
def sim() -> an_sim.Sim:
    return an_sim.simulate()


@pytest.fixture(scope="session")
def loaded(influxd, sim: an_sim.Sim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:  # type: ignore[no-untyped-def]
    """Raw lines written to the `raw` RP, then `db backfill` computes the aggregates (the CQs only see recent hours)."""
    client = Influx(influxd.url, "an_month")
    client.query('DROP DATABASE "an_month"', post=True)
    init_db(client, Layout("an_month", raw_duration="INF"))
    lines = sim.lines()
    for i in range(0, len(lines), 50_000):
        client.write(lines[i:i + 50_000])
    rng = LocalRange(an_sim.FIRST, an_sim.LAST, an_sim.TZ)
    backfill(client, rng.start, rng.end)
    reg = tmp_path_factory.mktemp("registry") / "registry.json"
    with Registry(reg).edit() as devices:
        for table, kit in ((an_sim.AIR, "air"), (an_sim.TRAFFIC, "traffic")):
            for dev, (site, zone, lat, lon) in table.items():
                devices[dev] = Device(dev, kit, site, zone, lat, lon)
    yield Loaded(client, sim, rng, reg)
    client.query('DROP DATABASE "an_month"', post=True)
    client.close()


# -- a small real fleet: the firmware on simulated hardware, the real broker, collector and InfluxDB ----------
FLEET_START = datetime(2026, 3, 1, 23, tzinfo=UTC)  # local midnight of Monday 2 March (Europe/Brussels)
FLEET_DAYS = 4  # 2-5 March, whole local days; the LEZ starts on the 4th
FLEET_LEZ = date(2026, 3, 4)
FLEET_DB = "an_fleet"
SENSORS = (  # the two air nodes beside the reference station, with errors the calibration must find
    {"no2": SensorError(1.25, 4.0, temp=0.30), "pm25": SensorError(1.40, 2.0, rh=0.08), "pm10": SensorError(1.30, 3.0, rh=0.12)},
    {"no2": SensorError(0.85, -3.0, temp=-0.20), "pm25": SensorError(0.80, 1.0, rh=0.05),
     "pm10": SensorError(0.90, -2.0, rh=0.10)},
)


@dataclass
class FleetRun:
    client: Influx
    fleet: Fleet
    registry: Path
    reference: Path
    """The reference station's hourly truth as a CSV (timestamp, pollutant, value)."""
    rng: LocalRange
    colocated: list[str]
    """Device ids beside the reference station, in the order of SENSORS."""
    stats: list


@pytest.fixture(scope="session")
def fleet_run(mosquitto, influxd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetRun]:  # type: ignore[no-untyped-def]
    """Seed 3: air nodes 0 and 1 beside the reference station (outside the LEZ), 4 and 6 inside, 3 and 7 outside;
    traffic nodes 2 (inside) and 5. Four simulated days at up to x40000: about half a minute on an idle host."""
    root = tmp_path_factory.mktemp("fleet")
    client = Influx(influxd.url, FLEET_DB)
    client.query(f'DROP DATABASE "{FLEET_DB}"', post=True)
    init_db(client, Layout(FLEET_DB, raw_duration="INF"))
    registry = root / "registry.json"
    cfg = FleetConfig(broker=mosquitto.url, air=6, traffic=2, seed=3, start=FLEET_START.timestamp(),
                      duration=FLEET_DAYS * 86400, speedup=40000,
                      lez_from=datetime.combine(FLEET_LEZ, datetime.min.time(), tzinfo=ZoneInfo(an_sim.TZ)).timestamp(),
                      state_dir=root / "nodes", registry=registry, drain_timeout=120,
                      reference=ReferenceStation(sensors=SENSORS))
    fleet = Fleet(cfg)
    fleet.write_registry(registry)
    coll = CollectorProcess("collector", root / "collector", 0, settings={
        "mqtt": {"url": mosquitto.url, "client_id": "an-fleet-collector"}, "influx": {"url": influxd.url, "db": FLEET_DB},
        "spool": {"dir": root / "collector" / "spool"}, "registry": {"path": registry}}).start(timeout=30)
    try:
        stats = asyncio.run(fleet.run())
        taken = sum(s.produced for s in stats)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            held = sum(int(s["values"][0][1]) for q in ('SELECT count("seq") FROM "air"',
                                                         'SELECT count("seq") FROM "traffic_flow" WHERE "direction" = \'in\'')
                       for s in client.query(q))
            if held >= taken:
                break
            time.sleep(0.5)
    finally:
        coll.stop(timeout=30)
    rng = LocalRange(date(2026, 3, 2), date(2026, 3, 5), an_sim.TZ)
    backfill(client, rng.start, rng.end)
    reference = root / "reference.csv"
    write_reference(reference, fleet.reference_series())
    yield FleetRun(client, fleet, registry, reference, rng, [fleet.nodes[i].stats.device for i in fleet.colocated], stats)
    client.query(f'DROP DATABASE "{FLEET_DB}"', post=True)
    client.close()
