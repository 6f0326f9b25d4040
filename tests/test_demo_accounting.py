"""The demo's last word on the readings: expected, taken and stored, and where they differ (no processes)."""

from __future__ import annotations

import io
import types
from pathlib import Path

import pytest
from rich.console import Console

from kerbside.demo import _accounting
from kerbside.simulator.expected import Expected
from kerbside.simulator.fleet import NodeStats


@pytest.fixture(autouse=True)
def _a_real_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI runs with TERM=dumb, where rich ignores the width asked for and wraps at 80 columns."""
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("COLUMNS", raising=False)


def _run(expected: Expected, stats: list[NodeStats], stored: int) -> tuple[bool, str]:
    con = Console(record=True, width=300, force_terminal=True, highlight=False, file=io.StringIO())
    demo = types.SimpleNamespace(metrics=lambda: {"kerbside_duplicates_total": 3.0, "kerbside_gaps_open": 0.0},
                                 plan=types.SimpleNamespace(state=Path("/tmp/demo-state")))
    ok = _accounting(con, demo, expected, stats, stored)
    return ok, con.export_text(styles=True)


def _node(device: str, expected: int, produced: int, buffered: int = 0) -> NodeStats:
    return NodeStats(0, device, "air", "lez", expected=expected, produced=produced, buffered=buffered)


def test_all_equal_is_said_plainly() -> None:
    ok, out = _run(Expected(2880, 2), [_node("a", 1441, 1441), _node("b", 1441, 1441)], 2882)
    assert ok
    assert "\x1b[32m✓ readings: 2,882 expected (2,880 intervals + 2 boot readings), 2,882 taken, 2,882 stored: " \
           "every reading due was taken and stored\x1b[0m (3 redelivered duplicates" in out
    assert "\x1b[31m" not in out and "\x1b[1;31m" not in out


def test_a_node_short_of_its_due_and_readings_left_on_flash_are_named_in_red() -> None:
    ok, out = _run(Expected(2880, 2), [_node("a", 1441, 1200, buffered=40), _node("b", 1441, 1441)], 2601)
    assert not ok
    assert "\x1b[1;31m✗ readings: 2,882 expected (2,880 intervals + 2 boot readings), 2,641 taken, 2,601 stored" in out
    assert "1 node(s) did not take the readings they were due: a 1,200 of 1,441" in out
    assert "40 taken but not in InfluxDB: 40 still on node flash, 0 dropped" in out
