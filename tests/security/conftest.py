"""Fixtures for the security suite: the real mosquitto on the files `broker-config` renders, emulated boards.

The provisioning tests' helpers (tests/provisioning/prov_helpers.py) are shared: the same broker, probes and
MicroPython VM boards, so an attack here is played against exactly what the provisioning tests provision onto.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE))
sys.path.append(str(HERE.parent / "provisioning"))
from prov_fixtures import *  # noqa: E402, F403  (the fixtures board and standin_dir, shared with tests/provisioning)
from prov_helpers import RenderedBroker  # noqa: E402
from sec_helpers import A, B  # noqa: E402


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables wrap at 80 columns; a wide console keeps each message on one line for the assertions."""
    from kerbside.provisioning import cli

    monkeypatch.setattr(cli.console, "width", 250)
    monkeypatch.setattr(cli.err, "width", 250)


@pytest.fixture
def rendered(tmp_path: Path) -> Iterator[RenderedBroker]:
    """A fresh broker per test: sessions and queues are what the attacks aim at, so none leaks between tests."""
    rb = RenderedBroker.create(tmp_path, (A, B)).start()
    yield rb
    rb.stop()
