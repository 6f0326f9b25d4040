"""Analyst-test fixtures: one simulated month loaded once into a database laid out by `db init`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import an_sim

from kerbside.analysis.influx import Influx
from kerbside.analysis.schema import Layout, backfill, init_db
from kerbside.analysis.timerange import LocalRange
from kerbside.core.registry import Device, Registry


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
