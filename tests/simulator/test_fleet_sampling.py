"""A fleet on a host too slow for its speedup still takes exactly the readings the schedule says.

No broker and no subprocess: the nodes' broker is a loopback port that refuses connections (a
socket bound but not listening), so every reading stays on the node's flash, where it is counted.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kerbside.simulator.fleet import FaultPlan, Fleet, FleetConfig, VirtualNode
from knode.hal import EPOCH_2000

HOUR = 3600
START = 1_767_225_600.0  # 2026-01-01 00:00 UTC


@pytest.fixture
def refusing_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _record(taken: dict[str, list[tuple[int, bool, int]]]):  # type: ignore[no-untyped-def]
    """on_boot hook: (t, synced, boot) of every reading each node appends to its flash."""

    def boot(vn: VirtualNode) -> None:
        assert vn.node is not None
        store = vn.node.store
        real = store.append
        log = taken.setdefault(vn.stats.device, [])

        def append(t: int, synced: bool, period: int, expected: int, samples: int, values: list) -> int:
            log.append((t, synced, store.boot))
            return real(t, synced, period, expected, samples, values)

        store.append = append

    return boot


async def _hog() -> None:
    """Blocks the event loop 1 ms at a time: the host cannot keep up with x200 000."""
    while True:
        time.sleep(0.001)
        await asyncio.sleep(0)


def test_every_reading_due_is_taken_on_an_overloaded_host(refusing_port: int, tmp_path: Path) -> None:
    cfg = FleetConfig(broker=f"mqtt://127.0.0.1:{refusing_port}", air=3, traffic=2, seed=4, start=START,
                      duration=3 * HOUR, speedup=200_000, state_dir=tmp_path / "flash", drain_timeout=0,
                      faults=FaultPlan(reboot_nodes=1, never_sync_nodes=1, wifi_drop_nodes=1, wifi_drop_s=HOUR))
    taken: dict[str, list[tuple[int, bool, int]]] = {}
    fleet = Fleet(cfg, on_boot=_record(taken))

    async def go() -> tuple[list, float]:
        hog = asyncio.create_task(_hog())
        t = time.monotonic()
        stats = await fleet.run()
        hog.cancel()
        return stats, time.monotonic() - t

    stats, wall = asyncio.run(go())
    assert wall > 2 * 3 * HOUR / 200_000, "the host really was too slow for the speedup"
    never = next(vn for vn in fleet.nodes if vn.board.faults.never_sync)
    cut = next(vn for vn in fleet.nodes if vn.reboot_at)
    assert never is not cut
    for vn, s in zip(fleet.nodes, stats, strict=True):
        assert s.produced == s.expected == len(taken[s.device]) == s.buffered, s
        assert s.dropped == 0 and s.sent == 0
        log = taken[s.device]
        if vn is never:
            # its own clock from 2000-01-01, one reading a minute from power-on, three hours of them
            assert log == [(EPOCH_2000 + 60 * k, False, 1) for k in range(3 * 60)]
            continue
        # the boot reading: the minute under way when NTP set the clock, stamped on the node's own clock
        # (re-stamped to the power-on second, START - 1, when sent), then the UTC grid from START
        boots = [k for k, (t, synced, _) in enumerate(log) if not synced]
        assert log[boots[0]][0] == EPOCH_2000, "a node that never knew the time starts at 2000-01-01"
        for k in boots[1:]:
            # a later boot's clock starts from the last known good time on its flash (TLS can check
            # certificates without NTP): on a period boundary after every earlier reading
            assert log[k][0] % 60 == 0 and log[k][0] > max(t for t, _, _ in log[:k])
        grid = [t for t, synced, _ in log if synced]
        assert grid == sorted(set(grid)) and grid[0] == START and grid[-1] == START + 3 * HOUR - 60
        if vn is cut:
            x = START + vn.reboot_at[0]
            lost = [t for t in range(int(START), int(START + 3 * HOUR), 60) if t not in grid]
            # the minute the power cut interrupted, and the next one if power came back too late for it
            assert lost[0] == x // 60 * 60 and len(lost) in (1, 2) and lost == list(range(lost[0], lost[-1] + 1, 60))
            assert [b for _, _, b in log] == [1] * (boots[1]) + [2] * (len(log) - boots[1])
            assert len(boots) == 2 and s.boots == 2
        else:
            assert grid == list(range(int(START), int(START + 3 * HOUR), 60)) and boots == [0]
    assert fleet.expected().total == sum(s.expected for s in stats)
    assert fleet.expected().boots == 4 + 1  # four nodes that sync, one of them powered on twice


def test_runs_that_could_not_be_counted_exactly_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="divides a day"):
        Fleet(FleetConfig(period=7, sample=7, state_dir=tmp_path))
    with pytest.raises(ValueError, match="two periods"):
        Fleet(FleetConfig(duration=100, state_dir=tmp_path))
    with pytest.raises(ValueError, match="power cut"):
        Fleet(FleetConfig(air=1, traffic=0, duration=240, start=START, state_dir=tmp_path,
                          faults=FaultPlan(reboot_nodes=1)))
    with pytest.raises(ValueError, match="power cuts: not enough nodes"):
        Fleet(FleetConfig(air=1, traffic=0, duration=HOUR, state_dir=tmp_path,
                          faults=FaultPlan(wifi_drop_nodes=1, reboot_nodes=1)))
