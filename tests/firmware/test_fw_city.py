"""The simulator's city signals: what the demo's analysis must be able to find in them."""

from __future__ import annotations

import datetime as dt
import math

from kerbside.simulator.city import LEZ_POLYGON, Site, inside, traffic_shape

MONDAY = dt.datetime(2026, 3, 2, tzinfo=dt.UTC).timestamp()
HOUR = 3600


def test_polygon() -> None:
    cx = sum(p[0] for p in LEZ_POLYGON) / len(LEZ_POLYGON)
    cy = sum(p[1] for p in LEZ_POLYGON) / len(LEZ_POLYGON)
    assert inside(cx, cy) and not inside(16.40, 48.23)


def test_weekday_rush_hours_and_quiet_weekend() -> None:
    night = traffic_shape(MONDAY + 3 * HOUR)
    morning = traffic_shape(MONDAY + 7 * HOUR)  # 08:00 CET
    evening = traffic_shape(MONDAY + 16.5 * HOUR)  # 17:30 CET
    saturday_morning = traffic_shape(MONDAY + 5 * 86400 + 7 * HOUR)
    assert morning > 5 * night and evening > 5 * night
    assert saturday_morning < morning / 2


def test_lez_cuts_heavy_traffic_and_no2_inside_only_from_its_start() -> None:
    t_before, t_after = MONDAY + 7 * HOUR, MONDAY + 7 * 86400 + 7 * HOUR
    lez = Site(48.207, 16.37, True, lez_from=MONDAY + 3 * 86400)
    out = Site(48.23, 16.40, False, lez_from=MONDAY + 3 * 86400)
    assert lez.vehicles_per_min(t_after)[3] < 0.5 * lez.vehicles_per_min(t_before)[3]
    assert lez.no2(t_after) < 0.8 * lez.no2(t_before)
    assert out.vehicles_per_min(t_after) == out.vehicles_per_min(t_before)
    assert out.no2(t_after) == out.no2(t_before)


def test_no2_follows_traffic_and_pm_reads_high_in_humid_air() -> None:
    s = Site(48.2, 16.37, False)
    assert s.no2(MONDAY + 7 * HOUR) > 2 * s.no2(MONDAY + 3 * HOUR)
    dry = next(t for t in range(int(MONDAY), int(MONDAY) + 86400, 600) if s.weather(t)[1] < 55)
    wet = next(t for t in range(int(MONDAY), int(MONDAY) + 14 * 86400, 600) if s.weather(t)[1] > 92)

    def dry_air_pm25(t: float) -> float:  # the model's PM2.5 before the optical sensor's humidity bias
        return 8 + 0.25 * s.emission_index(t) + 4 * math.sin(t / 400000) ** 2

    assert s.pm(dry)[1] == dry_air_pm25(dry)
    assert s.pm(wet)[1] > 1.2 * dry_air_pm25(wet)
