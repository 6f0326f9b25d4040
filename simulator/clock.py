"""Simulated time that never skips: a discrete-event clock paced against the wall clock.

Every firmware sleep in the simulator goes through `VirtualClock.sleep()`. The clock keeps its own
`now` (integer microseconds, so deadlines computed from whole milliseconds are exact) and a driver
task moves it from one sleeper's deadline to the next:

* never faster than `speedup` times the wall clock (a simulated week in minutes, not in a blink,
  so the real broker, collector and database keep up);
* never past a deadline until every task it woke at that instant has run and is parked again,
  and every task created meanwhile has run to its first wait. A task is parked when it waits on
  a future that is not resolved yet: a later sleep on this clock, a socket read, an event.

So a node's sampler, which only ever awaits the clock and writes flash synchronously, takes every
reading it is due however slow or busy the host is: a slow host makes the run take longer, it
never makes a node miss a sample slot. Network waits (PUBACK, socket reads, the link's 5 s wake
wait) stay in real time against the real broker while virtual time goes on, as they do on a node.

`sleep_until(t, last=True)` is for a controller that acts on the state at `t` (the fleet's fault
schedule and its end): it is woken after every other task due at `t` has run and parked, and time
does not move on until it parks again. So a reading whose interval ends exactly when the run ends
is taken, and a power cut at `t` happens after whatever was due at `t`.

Two asyncio internals, used only here (CPython 3.11+; tests/simulator/test_clock.py checks both):

* `Task._fut_waiter`, the future a task is suspended on (None while it is scheduled to run). asyncio
  has no public way to ask "is this task waiting on something unresolved, or about to run?", and
  that is exactly the question "may time move on?".
* a task factory (public API, `loop.set_task_factory`) that records the tasks created while time
  stands still: a node booting creates its sampler, link and watchdog tasks, and those must see
  the instant of the boot before time moves on.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

US = 1_000_000

_DRIVERS: weakref.WeakSet[asyncio.Task[None]] = weakref.WeakSet()
"""Every clock's driver task: never waited for by another clock (two clocks on one loop would wait on each other)."""


def parked(task: asyncio.Task[Any]) -> bool:
    """Finished, or suspended on a future that is not resolved: it cannot run before something happens."""
    if task.done():
        return True
    waiter = task._fut_waiter  # type: ignore[attr-defined]  # see the module docstring
    return waiter is not None and not waiter.done()


def to_us(seconds: float) -> int:
    return round(seconds * US)


class VirtualClock:
    def __init__(self, start: float, speedup: float = 1.0) -> None:
        if not speedup > 0:
            raise ValueError("speedup must be positive")
        self.start = start
        self.speedup = speedup
        self._now = to_us(start)
        self._heap: list[tuple[int, bool, int, asyncio.Future[None], asyncio.Task[Any] | None]] = []
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._driver: asyncio.Task[None] | None = None
        self._born: list[asyncio.Task[Any]] = []
        self._kick: asyncio.Future[None] | None = None
        self._kick_for = 0
        self._anchor = (0.0, self._now)
        self.instants = 0
        """Distinct instants time has stopped at (a measure of the simulation's work)."""

    # -- reading ---------------------------------------------------------------
    def now(self) -> float:
        return self._now / US

    def now_us(self) -> int:
        return self._now

    def lag(self) -> float:
        """How many real seconds simulated time is behind `speedup` x the wall clock (0 when on time)."""
        if self._loop is None:
            return 0.0
        w0, v0 = self._anchor
        return max(0.0, self._loop.time() - w0 - (self._now - v0) / US / self.speedup)

    # -- sleeping --------------------------------------------------------------
    async def sleep(self, seconds: float) -> None:
        await self._sleep_to(self._now + max(0, to_us(seconds)), False)

    async def sleep_until(self, t: float, last: bool = False) -> None:
        """Until simulated time t (now if t is past). last: after every other task due at t (see above)."""
        await self._sleep_to(max(self._now, to_us(t)), last)

    async def sleep_until_us(self, t_us: int, last: bool = False) -> None:
        """sleep_until() for an instant in integer microseconds (exact, whatever its size)."""
        await self._sleep_to(max(self._now, t_us), last)

    async def _sleep_to(self, deadline: int, last: bool) -> None:
        loop = self.attach()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, (deadline, last, next(self._seq), fut, asyncio.current_task()))
        kick = self._kick
        if kick is not None and not kick.done() and deadline < self._kick_for:
            kick.set_result(None)
        await fut

    def block(self, seconds: float) -> None:
        """Let `seconds` of simulated time pass outside any event loop (the self-test sleeps blocking)."""
        target = self._now + max(0, to_us(seconds))
        if any(not w[3].done() and w[0] < target for w in self._heap):
            raise RuntimeError("a blocking sleep would skip tasks sleeping on this clock")
        time.sleep((target - self._now) / US / self.speedup)
        self._now = target

    # -- driving ---------------------------------------------------------------
    def attach(self) -> asyncio.AbstractEventLoop:
        """Drive this clock from the running event loop (the first sleep does it too).

        Call it before creating tasks that must not miss the first instants (the fleet does):
        tasks created from then on are waited for before time moves."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._driver is not None and not self._driver.done():
            return loop
        self._loop = loop
        self._heap = [w for w in self._heap if not w[3].done() and w[3].get_loop() is loop]
        heapq.heapify(self._heap)
        self._anchor = (loop.time(), self._now)
        self._born = []
        self._driver = loop.create_task(self._drive(), name="virtual-clock")
        _DRIVERS.add(self._driver)
        loop.set_task_factory(_recording(loop.get_task_factory(), self._born))
        return loop

    async def _drive(self) -> None:
        try:
            await self._advance()
        except Exception as e:  # a bug here must not leave every sleeper hanging: they raise it
            for w in self._heap:
                if not w[3].done():
                    w[3].set_exception(e)
            raise

    async def _advance(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._settle(())  # tasks created while time stood still see this instant first
            heap = self._heap
            while heap and heap[0][3].done():
                heapq.heappop(heap)  # its sleeper was cancelled
            if not heap:
                await self._pause(None)
                continue
            deadline, last = heap[0][0], heap[0][1]
            if deadline > self._now:
                w0, v0 = self._anchor
                delay = w0 + (deadline - v0) / US / self.speedup - loop.time()
                if delay > 0:
                    await self._pause(delay, deadline)
                    continue
                self._now = deadline
                self.instants += 1
            woken = []
            while heap and heap[0][0] == deadline and heap[0][1] == last:
                _, _, _, fut, task = heapq.heappop(heap)
                if not fut.done():
                    fut.set_result(None)
                    if task is not None:
                        woken.append(task)
            await self._settle(woken)

    async def _settle(self, woken: Iterable[asyncio.Task[Any]]) -> None:
        """Until every task in `woken` and every task created meanwhile has run and parked."""
        pending = list(woken)
        born = self._born
        seen = 0
        while True:
            if seen < len(born):
                pending.extend(t for t in born[seen:] if t not in _DRIVERS)
                seen = len(born)
            pending = [t for t in pending if not parked(t)]
            if not pending:
                break
            await asyncio.sleep(0)
        born.clear()

    async def _pause(self, delay: float | None, deadline: int | None = None) -> None:
        """Wait `delay` real seconds (None: until a sleeper arrives), or less if an earlier sleeper arrives."""
        loop = asyncio.get_running_loop()
        kick = self._kick = loop.create_future()
        self._kick_for = deadline if deadline is not None else 2**63
        handle = loop.call_later(delay, _resolve, kick) if delay is not None else None
        try:
            await kick
        finally:
            self._kick = None
            if handle is not None:
                handle.cancel()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _recording(factory: Callable[..., asyncio.Task[Any]] | None,
               born: list[asyncio.Task[Any]]) -> Callable[..., asyncio.Task[Any]]:
    """A task factory that creates tasks as `factory` would (or as asyncio does) and notes them in `born`."""

    def create(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kw: Any) -> asyncio.Task[Any]:
        task = factory(loop, coro, **kw) if factory is not None else asyncio.Task(coro, loop=loop, **kw)
        born.append(task)
        return task

    return create
