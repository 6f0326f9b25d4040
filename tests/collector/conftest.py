"""Collector fixtures: a fresh broker per test (helpers live in kc_helpers.py next to this file)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kerbside.devstack import Mosquitto, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of our own per test: no retained messages or sessions leak between tests, and it can be restarted."""
    b = Mosquitto("mosquitto", tmp_path / "broker", free_port()).start()
    yield b
    b.stop()
