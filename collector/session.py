"""Telling a client-id collision from ordinary disconnects, from what the collector's MQTT client sees.

Two collectors left on one mqtt.client_id take the broker's session from each
other: the broker closes the older connection whenever the other connects, and
each receives part of the stream. MQTT v5 says so with DISCONNECT reason 0x8E
(Session taken over; Mosquitto sends it from 2.0.15). Older brokers, Mosquitto
2.0.11 among them, just close the connection, so a takeover is also recognised
by its shape: the broker closed a working connection and accepted us again at
the first attempt (a broker that went away refuses the first attempts). A quick
broker restart has that shape too, so one such event is "suspected", and a
conflict is declared at CONFLICT_AFTER of them within WINDOW_S (or one 0x8E).

While any takeover lies within the window the stream is partial (the other
client has taken some of our messages, and stored them): the collector opens
no gaps then, and it reconnects with a growing delay so that the two flap less.
Pure logic on a clock, so it is tested without a broker.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

SESSION_TAKEN_OVER = 0x8E
WINDOW_S = 600.0
CONFLICT_AFTER = 3
MAX_BACKOFF_S = 60


class SessionWatch:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.total = 0
        """Takeovers seen (definite and suspected) since start."""
        self._times: deque[float] = deque()
        self._definite: float | None = None
        self._dropped = False
        self._refused = False

    def _record(self) -> None:
        self.total += 1
        self._times.append(self.clock())

    def disconnected(self, reason: int) -> bool:
        """The broker closed our connection (not at our request); True when it said the session was taken over."""
        if reason == SESSION_TAKEN_OVER:
            self._record()
            self._definite = self.clock()
            self._dropped = False
            return True
        self._dropped, self._refused = True, False
        return False

    def connect_failed(self) -> None:
        self._refused = True

    def connected(self) -> bool:
        """A connection is up; True when it completes a suspected takeover (dropped, then taken back at once)."""
        suspected = self._dropped and not self._refused
        if suspected:
            self._record()
        self._dropped = self._refused = False
        return suspected

    def recent(self) -> int:
        """Takeovers within the window."""
        cutoff = self.clock() - WINDOW_S
        while self._times and self._times[0] < cutoff:
            self._times.popleft()
        return len(self._times)

    @property
    def partial(self) -> bool:
        """Another client may have taken some of our messages lately: jumps in sequence numbers are not gaps."""
        return self.recent() > 0

    @property
    def conflict(self) -> bool:
        """Another client is using our client id."""
        n = self.recent()
        return n >= CONFLICT_AFTER or (n > 0 and self._definite is not None and self._definite >= self.clock() - WINDOW_S)

    def backoff_s(self) -> int:
        """Seconds to wait before reconnecting: 1, doubling with each recent takeover, at most MAX_BACKOFF_S."""
        n = self.recent()
        return 1 if n == 0 else min(MAX_BACKOFF_S, 2 ** (n - 1))
