"""Fixtures for provisioning tests: the real mosquitto with the rendered kerbside config, emulated boards, firmware."""

from __future__ import annotations

import functools
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kerbside.core.registry import Registry
from kerbside.devstack import LOOPBACK, Mosquitto, free_port
from kerbside.provisioning import broker, bundle
from kerbside.provisioning.broker_dir import BrokerDir, collector_password, render_auth, write_all
from kerbside.provisioning.bundle import DeviceFile
from kerbside.provisioning.rawrepl import RawRepl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.append(str(HERE))
from prov_helpers import WAIT, EmulatedBoard, Probe, add_device, connect, start_board  # noqa: E402


@dataclass
class FleetBroker:
    mosquitto: Mosquitto
    dir: BrokerDir
    registry: Registry
    secrets: dict[str, str]
    tls_port: int

    @property
    def plain_port(self) -> int:
        return self.mosquitto.port

    @property
    def ca(self) -> Path:
        return self.dir.files.cafile

    def collector(self) -> Probe:
        return connect(self.plain_port, broker.COLLECTOR_USER, collector_password(self.dir))

    def rerender_and_reload(self) -> None:
        """What an operator does after `registry decommission|rotate`: re-render, then SIGHUP."""
        render_auth(self.dir, self.registry.load())
        assert self.mosquitto.proc is not None
        self.mosquitto.proc.send_signal(signal.SIGHUP)


FLEET = ("0a0a0a01", "0a0a0a02", "0a0a0a03", "0a0a0a04")


@pytest.fixture(scope="module")
def fleet_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetBroker]:
    root = tmp_path_factory.mktemp("fleet-broker")
    registry = Registry(root / "registry.json")
    secrets = {d: add_device(registry, d) for d in FLEET}
    d = BrokerDir(root / "broker")
    tls_port = free_port()
    write_all(d, registry.load(), ["127.0.0.1", "localhost"], root / "state", tls_port=tls_port)
    extra = broker.render_security(d.files, tls_port, LOOPBACK)
    mosq = Mosquitto("mosquitto", root / "state", free_port(), extra=extra, anonymous=False).start()
    # The TLS listener comes up with the plain one, but wait for it rather than assume.
    with socket.create_connection((LOOPBACK, tls_port), timeout=WAIT):
        pass
    yield FleetBroker(mosq, d, registry, secrets, tls_port)
    mosq.stop()


@pytest.fixture
def board(micropython: object) -> Iterator[EmulatedBoard]:
    b = start_board()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def firmware_files() -> list[DeviceFile]:
    """The real firmware, compiled with mpy-cross, self-test included."""
    return bundle.build()


@pytest.fixture(scope="session")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real firmware with a stand-in self-test that can pass without hardware (see standin/selftest.py)."""
    fw = tmp_path_factory.mktemp("firmware")
    shutil.copytree(ROOT / "firmware", fw, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(HERE / "standin" / "selftest.py", fw / "knode" / "selftest.py")
    return fw


@pytest.fixture(scope="session")
def standin_files(standin_dir: Path) -> list[DeviceFile]:
    return bundle.build(standin_dir)


@pytest.fixture
def fast_repl() -> Callable[[str], RawRepl]:
    """The emulated board needs no pauses between serial writes."""
    return functools.partial(RawRepl, write_pause=0)
