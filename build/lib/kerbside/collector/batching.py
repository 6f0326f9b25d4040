"""When the decoder cuts a batch: the rules of docs/collector.md ("Batching and writes") in one place.

A batch is cut when it holds `lines` lines or `max_messages` messages (rejected
ones count: they are acked with it), when its first message has waited
`interval_s`, or when no message arrived for `linger_s` (low latency when quiet,
big batches under load). Pure functions of the batch's size and age, so the
rules are tested without a broker or a clock.
"""

from __future__ import annotations

from typing import Protocol

IDLE_POLL_S = 0.2
"""With nothing to cut, how often the decoder looks up from an empty inbox (to notice stop())."""


class Rules(Protocol):
    lines: int
    max_messages: int
    interval_s: float
    linger_s: float


def due(lines: int, messages: int, age_s: float, rules: Rules) -> bool:
    """Cut now, without waiting for another message: enough lines, enough messages, or old enough."""
    return messages > 0 and (lines >= rules.lines or messages >= rules.max_messages or age_s >= rules.interval_s)


def wait_s(messages: int, age_s: float, rules: Rules) -> float:
    """How long to wait for the next message; if none comes in that time, the open batch is cut (linger).

    Never past the batch's interval, so a steady trickle slower than linger_s cannot delay it further.
    """
    if messages == 0:
        return IDLE_POLL_S
    return max(0.0, min(rules.linger_s, rules.interval_s - age_s))
