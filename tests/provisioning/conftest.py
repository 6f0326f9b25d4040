"""Fixtures for provisioning tests: the real mosquitto with the rendered kerbside config, emulated boards, firmware."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kerbside.provisioning import broker, bundle
from kerbside.provisioning.broker_dir import render_nodes
from kerbside.provisioning.bundle import DeviceFile
from kerbside.provisioning.rawrepl import RawRepl

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE))
from prov_fixtures import *  # noqa: E402, F403  (the fixtures board and standin_dir, shared with tests/security)
from prov_helpers import Probe, RenderedBroker, connect  # noqa: E402


class FleetBroker(RenderedBroker):
    def collector(self, user: str = broker.INGEST_USER) -> Probe:
        """A collector's ingest account (a fresh session each time: these tests look at the ACL, not sessions).

        Two clients of one account cannot be connected at once (the client id is the user name): a second
        watcher uses the second collector's account."""
        return connect(self.plain_port, user, self.secret(user), client_id=user)

    def rerender_and_reload(self) -> None:
        """What an operator does after `registry decommission|rotate`: re-render the nodes' files, then SIGHUP."""
        render_nodes(self.dir, self.registry.load(), self.settings.system_user)
        self.hup()


FLEET = ("0a0a0a01", "0a0a0a02", "0a0a0a03", "0a0a0a04")
SECOND_COLLECTOR = "collector-2"


@pytest.fixture(scope="module")
def fleet_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetBroker]:
    fb = FleetBroker.create(tmp_path_factory.mktemp("fleet-broker"), FLEET,
                            ingest_users=[broker.INGEST_USER, SECOND_COLLECTOR]).start()
    yield fb  # type: ignore[misc]
    fb.stop()


@pytest.fixture(scope="session")
def firmware_files() -> list[DeviceFile]:
    """The real firmware, compiled with mpy-cross, self-test included."""
    return bundle.build()


@pytest.fixture(scope="session")
def standin_files(standin_dir: Path) -> list[DeviceFile]:
    return bundle.build(standin_dir)


@pytest.fixture
def fast_repl() -> Callable[[str], RawRepl]:
    """The emulated board needs no pauses between serial writes."""
    return functools.partial(RawRepl, write_pause=0)
