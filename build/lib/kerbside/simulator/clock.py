"""A virtual clock for accelerated simulation: time runs `speedup` times faster than the host's.

Firmware sleeps go through it too, so a node sampling every 10 simulated seconds
sleeps 10/speedup real seconds, and a simulated week passes in minutes.
Network waits (PUBACK, keepalive) stay in real time: the broker is real.
"""

from __future__ import annotations

import asyncio
import time


class VirtualClock:
    def __init__(self, start: float, speedup: float = 1.0) -> None:
        if speedup <= 0:
            raise ValueError("speedup must be positive")
        self.start = start
        self.speedup = speedup
        self._t0 = time.monotonic()

    def now(self) -> float:
        return self.start + (time.monotonic() - self._t0) * self.speedup

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speedup)

    async def sleep_until(self, t: float) -> None:
        await self.sleep(t - self.now())
