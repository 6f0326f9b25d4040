"""Session fixtures: real mosquitto and influxd on free loopback ports, and the MicroPython VM.

process_guard (next to this file) makes the markers mean what they say: outside `services`, no process starts.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kerbside.devcluster import RabbitCluster
from kerbside.devstack import Influxd, Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from influx_helpers import InfluxHTTP  # noqa: E402
from mpy import vm  # noqa: E402

pytest_plugins = ["process_guard", "pytester"]
# The suite must not read the developer's settings: no KERBSIDE_* variable from the shell, and no settings
# file from the search path (./kerbside.toml, ~/.config/kerbside, /etc/kerbside). Subprocesses inherit this.
for _name in [n for n in os.environ if n.startswith("KERBSIDE_")]:
    del os.environ[_name]
os.environ["KERBSIDE_CONFIG"] = ""


@pytest.fixture(scope="session")
def vectors() -> list[dict]:
    return json.loads((ROOT / "docs" / "wire" / "vectors.json").read_text())


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto("mosquitto", tmp_path_factory.mktemp("mosquitto"), free_port()).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    db = Influxd("influxd", tmp_path_factory.mktemp("influxd"), free_port()).start()
    yield db
    db.stop()


@pytest.fixture
def influx(influxd: Influxd, request: pytest.FixtureRequest) -> Iterator[InfluxHTTP]:
    """A fresh database on the session's influxd, dropped afterwards."""
    name = "t_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:60]
    client = InfluxHTTP(influxd.url, name)
    client.query(f'DROP DATABASE "{name}"', post=True)
    client.query(f'CREATE DATABASE "{name}"', post=True)
    yield client
    client.query(f'DROP DATABASE "{name}"', post=True)


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """A 3-node RabbitMQ cluster for the tests that do not kill its nodes (the kill test starts its own)."""
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbit"), 3, anonymous=False).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def micropython() -> object:
    if not vm.available():
        pytest.fail("MicroPython VM missing: `make test` installs it (npm ci in tests/mpy)")
    return vm
