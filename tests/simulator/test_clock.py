"""The simulator's clock: time moves from deadline to deadline, waits for every task, never skips one."""

from __future__ import annotations

import asyncio
import time

import pytest

from kerbside.simulator.clock import US, VirtualClock, parked

T0 = 1_767_225_600.0


def test_parked_reads_the_task_state_on_this_python() -> None:
    """The one asyncio internal the clock relies on (Task._fut_waiter), checked on the running CPython."""

    async def go() -> list[bool]:
        fut = asyncio.get_running_loop().create_future()

        async def wait() -> None:
            await fut

        task = asyncio.create_task(wait())
        states = [parked(task)]  # created, not started: about to run
        await asyncio.sleep(0)
        states.append(parked(task))  # suspended on an unresolved future
        fut.set_result(None)
        states.append(parked(task))  # its future resolved: about to run again
        await asyncio.sleep(0)
        states.append(parked(task))  # finished
        return states

    assert asyncio.run(go()) == [False, True, False, True]


def test_sleepers_wake_at_their_exact_deadlines_in_order() -> None:
    clock = VirtualClock(T0, speedup=1e6)
    woke: list[tuple[str, int]] = []

    async def sleeper(name: str, seconds: list[float]) -> None:
        for s in seconds:
            await clock.sleep(s)
            woke.append((name, clock.now_us()))

    async def go() -> None:
        await asyncio.gather(sleeper("a", [0.25, 0.25, 59.5]), sleeper("b", [1.5, 58.5]), sleeper("c", [0.001]))

    asyncio.run(go())
    t0 = round(T0 * US)
    assert woke == [("c", t0 + 1_000), ("a", t0 + 250_000), ("a", t0 + 500_000), ("b", t0 + 1_500_000),
                    ("a", t0 + 60_000_000), ("b", t0 + 60_000_000)]


def test_a_sampler_takes_every_slot_while_the_host_is_too_slow_for_the_speedup() -> None:
    """A loop that sleeps to each minute and measures how late it woke, as the firmware's sampler does,
    next to a hog that blocks the event loop: at x100 000 a simulated minute is 0.6 ms, the hog takes
    2 ms each time it runs. Time waits for the sampler; it is never late."""
    clock = VirtualClock(T0, speedup=100_000)
    late: list[int] = []

    async def sampler() -> None:
        t = clock.now_us()
        for _ in range(500):
            t += 60 * US
            await clock.sleep((t - clock.now_us()) / US)
            late.append(clock.now_us() - t)
            time.sleep(0.0002)  # the work of taking a reading

    async def hog() -> None:
        while True:
            time.sleep(0.002)
            await asyncio.sleep(0)

    async def go() -> float:
        h = asyncio.create_task(hog())
        t = time.monotonic()
        await sampler()
        h.cancel()
        return time.monotonic() - t

    wall = asyncio.run(go())
    assert late == [0] * 500
    assert clock.now_us() == round(T0 * US) + 500 * 60 * US
    assert wall > 500 * 0.002, "the hog really did slow the host down"


def test_time_never_runs_faster_than_speedup_times_the_wall_clock() -> None:
    clock = VirtualClock(T0, speedup=1000)

    async def go() -> float:
        t = time.monotonic()
        for _ in range(10):
            await clock.sleep(10)
        return time.monotonic() - t

    assert asyncio.run(go()) >= 100 / 1000
    assert clock.now() == T0 + 100


def test_tasks_created_while_time_stands_still_see_that_instant() -> None:
    """A node booting at t creates its sampler and link: they start at t, not at the next deadline."""
    clock = VirtualClock(T0, speedup=1e6)
    seen: list[int] = []

    async def child() -> None:
        seen.append(clock.now_us())

    async def parent() -> None:
        await clock.sleep(5)
        task = asyncio.create_task(child())
        await asyncio.get_running_loop().create_future()  # parks for good, like a node's gather
        await task

    async def go() -> None:
        clock.attach()
        p = asyncio.create_task(parent())
        await clock.sleep(5.000001)  # the next deadline, one microsecond later
        seen.append(clock.now_us())
        p.cancel()

    asyncio.run(go())
    t0 = round(T0 * US)
    assert seen == [t0 + 5 * US, t0 + 5 * US + 1]


def test_last_sleepers_wake_after_everything_else_due_at_the_same_instant() -> None:
    clock = VirtualClock(T0, speedup=1e6)
    order: list[str] = []

    async def node(name: str) -> None:
        await clock.sleep(60)
        order.append(name)
        await asyncio.sleep(0)  # more work at the same instant before it sleeps again
        await asyncio.sleep(0)
        order.append(name + " again")
        await clock.sleep(60)

    async def controller() -> None:
        await clock.sleep_until(T0 + 60, last=True)
        order.append("controller")

    async def go() -> None:
        await asyncio.gather(controller(), node("a"), node("b"))

    asyncio.run(go())
    assert order[-1] == "controller" and sorted(order[:-1]) == ["a", "a again", "b", "b again"]


def test_a_task_waiting_on_the_network_does_not_hold_time_back() -> None:
    clock = VirtualClock(T0, speedup=1e6)

    async def go() -> None:
        never = asyncio.get_running_loop().create_future()  # a socket read that never completes
        reader = asyncio.create_task(asyncio.wait_for(never, 30))
        await clock.sleep(86400)
        assert not reader.done()
        reader.cancel()

    asyncio.run(asyncio.wait_for(go(), 10))
    assert clock.now() == T0 + 86400


def test_a_cancelled_sleeper_is_skipped() -> None:
    clock = VirtualClock(T0, speedup=1e6)
    woke: list[str] = []

    async def sleeper(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append(name)

    async def go() -> None:
        a = asyncio.create_task(sleeper("a", 10))
        b = asyncio.create_task(sleeper("b", 20))
        await asyncio.sleep(0)
        a.cancel()
        await b

    asyncio.run(go())
    assert woke == ["b"] and clock.now() == T0 + 20


def test_the_same_clock_goes_on_in_a_new_event_loop_and_outside_one() -> None:
    clock = VirtualClock(T0, speedup=1e6)
    asyncio.run(clock.sleep(30))
    clock.block(1.5)  # the self-test's blocking sleeps
    asyncio.run(clock.sleep(28.5))
    assert clock.now() == T0 + 60


def test_a_blocking_sleep_refuses_to_skip_a_sleeper() -> None:
    clock = VirtualClock(T0, speedup=1e6)

    async def go() -> None:
        t = asyncio.create_task(clock.sleep(10))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="skip"):
            clock.block(20)
        await t

    asyncio.run(go())
    assert clock.now() == T0 + 10


def test_speedup_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        VirtualClock(T0, speedup=0)
