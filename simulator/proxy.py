"""A per-node TCP relay to the real broker: where Wi-Fi drops and broker outages happen.

Cutting the relay is what a node sees when its access point vanishes or the
broker goes away: established connections die and new ones are refused
until the fault ends. The broker itself stays up (the demo stops the real
one separately).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class Relay:
    def __init__(self, target_host: str, target_port: int, is_down: Callable[[], bool]) -> None:
        self.target = (target_host, target_port)
        self.is_down = is_down
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.refused = 0

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.is_down():
            self.refused += 1
            w.close()
            return
        try:
            br, bw = await asyncio.open_connection(*self.target)
        except OSError:
            self.refused += 1
            w.close()
            return
        if self.is_down():  # the fault began while we were connecting: cut() did not see this one
            self.refused += 1
            bw.close()
            w.close()
            return
        self._writers.update((w, bw))
        await asyncio.gather(self._pipe(r, bw), self._pipe(br, w), return_exceptions=True)
        self._writers.difference_update((w, bw))

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                w.close()

    def cut(self) -> None:
        """Kill every open connection abruptly (no MQTT DISCONNECT: the broker sends the Last Will)."""
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
