"""Fixtures shared by the provisioning tests and the security suite (tests/security imports them too)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prov_helpers import EmulatedBoard, standin_firmware, start_board

__all__ = ["board", "standin_dir"]


@pytest.fixture
def board(micropython: object) -> Iterator[EmulatedBoard]:
    """A freshly booted emulated board, stopped afterwards."""
    b = start_board()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real firmware with a stand-in self-test that can pass without hardware (see standin/selftest.py)."""
    return standin_firmware(tmp_path_factory.mktemp("firmware"))
