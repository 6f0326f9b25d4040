"""What a simulated node must take: interval readings and boot readings, from the schedule alone."""

from __future__ import annotations

import pytest

from kerbside.simulator import expected as ex
from kerbside.simulator.clock import US

DAY = 86400 * US
T0 = 1_767_225_600 * US  # 2026-01-01 00:00 UTC, a period boundary
P = 60


def test_power_on_is_one_second_before_a_period_boundary() -> None:
    assert ex.first_power_on(T0, P) == T0 - US
    assert ex.first_power_on(T0 + 1, P) == T0 + 59 * US  # an odd start: the next boundary
    assert ex.power_on_after(T0 + 10 * US, P) == T0 + 59 * US
    assert ex.power_on_after(T0 + 59 * US, P) == T0 + 119 * US  # strictly after the cut
    assert ex.power_on_after(T0 + 58 * US + 999_999, P) == T0 + 59 * US


def test_a_day_is_1440_interval_readings_and_one_boot_reading() -> None:
    on = ex.first_power_on(T0, P)
    assert ex.for_span(ex.Span(on, T0 + DAY, True), P, T0 + DAY) == ex.Expected(1440, 1)
    assert ex.for_span(ex.Span(on, T0 + DAY, True), 300, T0 + DAY) == ex.Expected(288, 1)
    # a node whose NTP never answers counts minutes on its own clock from power-on, and has no boot reading
    assert ex.for_span(ex.Span(on, T0 + DAY, False), P, T0 + DAY) == ex.Expected(1440, 0)


def test_a_power_cut_loses_the_interval_it_interrupts() -> None:
    on = ex.first_power_on(T0, P)
    cut = T0 + 600 * US + 30 * US  # in the 11th minute
    again = ex.power_on_after(cut, P)
    assert again == T0 + 659 * US
    first = ex.for_span(ex.Span(on, cut, True), P, T0 + DAY)
    second = ex.for_span(ex.Span(again, T0 + DAY, True), P, T0 + DAY)
    assert first == ex.Expected(10, 1)  # minutes 0..9; minute 10 was under way
    assert second == ex.Expected(1440 - 11, 1)  # from minute 11 on
    # a cut in the last second before a boundary: power returns a period later, two intervals lost
    late = T0 + 659 * US + 500_000
    assert ex.for_span(ex.Span(on, late, True), P, T0 + DAY).intervals == 10
    assert ex.for_span(ex.Span(ex.power_on_after(late, P), T0 + DAY, True), P, T0 + DAY).intervals == 1440 - 12


def test_the_end_of_the_run_is_exact() -> None:
    on = ex.first_power_on(T0, P)
    assert ex.for_span(ex.Span(on, T0 + DAY, True), P, T0 + 3600 * US).intervals == 60
    assert ex.for_span(ex.Span(on, T0 + DAY, True), P, T0 + 3600 * US - 1).intervals == 59
    # powered on again after the end: it only drains its flash
    assert ex.for_span(ex.Span(T0 + DAY + 59 * US, T0 + 2 * DAY, True), P, T0 + DAY) == ex.Expected()


def test_schedules_that_could_not_be_counted_are_refused() -> None:
    on = ex.first_power_on(T0, P)
    end = T0 + DAY
    ex.check_span(ex.Span(on, on + 2 * P * US, True), P, end, cut=True)
    with pytest.raises(ValueError, match="two periods"):
        ex.check_span(ex.Span(on, on + 2 * P * US - 1, True), P, end, cut=True)
    with pytest.raises(ValueError, match="three periods"):
        ex.check_span(ex.Span(on, end - 3 * P * US, True), P, end, cut=True)
    with pytest.raises(ValueError, match="one second before"):
        ex.check_span(ex.Span(T0, end, True), P, end, cut=False)
    with pytest.raises(ValueError, match="divides a day"):
        ex.check_period(7)
    ex.check_period(900)
