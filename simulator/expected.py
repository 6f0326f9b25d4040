"""How many readings a simulated node must take: computed from the fleet's schedule, never from the nodes.

The rule is what a real node does (firmware/knode/node.py, docs/firmware.md "Fleet simulator"):

* **Interval readings.** While a node is powered it takes one reading per complete period
  interval of its clock: the UTC grid (multiples of `period` since 1970) once NTP has set the
  clock, its own grid counted from power-on (the RTC starts at 2000-01-01 00:00:00) if NTP never
  answers. An interval counts when the node was powered for all of it and it ended no later than
  the run: the interval a power cut interrupts is lost with the RAM that held it, and the one in
  progress at the end of the run is not taken.
* **Boot readings.** At power-on the clock is unset; the node samples on its own clock until
  NTP sets it, then closes the interval in progress and stores it (re-stamped to the true time
  of power-on when sent). So every boot whose clock NTP sets adds exactly one reading, whose
  timestamp is the power-on second.

The simulator makes the second rule exact and keeps boot readings apart from interval readings:
a node powers on one second before a period boundary (at the start of the run, and after a power
cut at the first such instant after it), NTP answers at once when it has Wi-Fi, and a power cut
comes no sooner than two periods after a power-on and no later than three periods before the end
(so the boot reading and the first interval reading are stored before power goes or the run ends).
Boots while the node has no Wi-Fi are not scheduled (the moment NTP would answer then depends on
the link's retry timing). `period` must divide a day, so the node's own grid lines up with
power-on. `check_span` enforces all of this and says which rule a schedule breaks.
"""

from __future__ import annotations

from dataclasses import dataclass

from kerbside.simulator.clock import US

BOOT_LEAD_US = 1 * US
"""A node powers on this long before a period boundary."""


@dataclass(frozen=True)
class Span:
    """One boot: power-on to power cut (or to the end of the run), simulated microseconds since 1970."""

    on: int
    off: int
    syncs: bool
    """NTP sets the clock at power-on (False: never, e.g. a node whose NTP is blocked)."""


@dataclass(frozen=True)
class Expected:
    intervals: int = 0
    boots: int = 0
    """Boot readings: one per boot whose clock NTP set."""

    @property
    def total(self) -> int:
        return self.intervals + self.boots

    def __add__(self, other: Expected) -> Expected:
        return Expected(self.intervals + other.intervals, self.boots + other.boots)


def check_period(period: int) -> None:
    if period <= 0 or 86400 % period:
        raise ValueError(f"period {period} s: the simulator needs a period that divides a day (60, 300, 900, ...)")


def power_on_after(t_us: int, period: int) -> int:
    """The first power-on instant (one second before a period boundary) strictly after t_us."""
    p = period * US
    return ((t_us + BOOT_LEAD_US) // p + 1) * p - BOOT_LEAD_US


def first_power_on(start_us: int, period: int) -> int:
    """Power-on at the start of a run: one second before the first period boundary at or after start."""
    p = period * US
    return -(-start_us // p) * p - BOOT_LEAD_US


def for_span(span: Span, period: int, end_us: int) -> Expected:
    """Readings one boot must take in a run that ends at end_us."""
    p = period * US
    on, off = span.on, min(span.off, end_us)
    if on >= end_us:
        return Expected()  # powered on after the run: it only drains what its flash holds
    if span.syncs:
        first = -(-on // p) * p  # UTC grid: the first boundary after power-on
        return Expected(max(0, (off - first) // p), 1)
    return Expected(max(0, (off - on) // p), 0)  # its own grid, from power-on


def check_span(span: Span, period: int, end_us: int, cut: bool) -> None:
    """Raise ValueError if the boot is scheduled so that the rules above cannot say what it takes."""
    p = period * US
    if (span.on + BOOT_LEAD_US) % p:
        raise ValueError(f"power-on at {span.on / US:.6f} is not one second before a period boundary")
    if span.on >= end_us:
        return
    if span.off - span.on < 2 * p:
        raise ValueError(f"power cut {(span.off - span.on) / US:.0f} s after power-on: "
                         f"needs at least two periods ({2 * period} s)")
    if cut and end_us - span.off <= 3 * p:
        raise ValueError(f"power cut {(end_us - span.off) / US:.0f} s before the end of the run: "
                         f"needs more than three periods ({3 * period} s)")
