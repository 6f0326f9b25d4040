"""City-like signals for the simulated sensors, a pure function of place and time.

Traffic has morning and evening peaks on weekdays and a late, flat day at
weekends; NO2 is a background plus a part that follows local traffic; PM has
a regional background, a traffic part and a humidity bias (optical sensors
over-read in humid air); the Low Emission Zone, from its start date, cuts
heavy vehicles inside the zone and with them part of NO2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A compact inner-city LEZ polygon (lon, lat), in the spirit of a European old town.
LEZ_POLYGON: tuple[tuple[float, float], ...] = (
    (16.355, 48.200), (16.372, 48.196), (16.386, 48.204), (16.382, 48.216), (16.365, 48.219), (16.352, 48.211),
)
CITY_BBOX = (16.320, 48.180, 16.420, 48.235)  # lon_min, lat_min, lon_max, lat_max
UTC_OFFSET_H = 1.0  # local time for the diurnal shape (CET)
LEZ_HEAVY_FACTOR = 0.35
LEZ_VAN_FACTOR = 0.8


def inside(lon: float, lat: float, poly: tuple[tuple[float, float], ...] = LEZ_POLYGON) -> bool:
    """Even-odd ray casting."""
    hit = False
    j = len(poly) - 1
    for i in range(len(poly)):
        xi, yi = poly[i]
        xj, yj = poly[j]
        if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
            hit = not hit
        j = i
    return hit


def _bump(h: float, centre: float, width: float) -> float:
    return math.exp(-0.5 * ((h - centre) / width) ** 2)


def traffic_shape(t: float) -> float:
    """Relative traffic intensity 0..~1 at unix time t (local diurnal and weekly pattern)."""
    local = t + UTC_OFFSET_H * 3600
    h = (local % 86400) / 3600
    weekday = int(local // 86400 + 3) % 7  # 0 = Monday (1970-01-01 was a Thursday)
    if weekday >= 5:
        return 0.08 + 0.45 * _bump(h, 13.5, 3.5)
    return 0.06 + 0.9 * _bump(h, 8.0, 1.3) + 0.8 * _bump(h, 17.5, 1.8) + 0.45 * _bump(h, 12.5, 3.0)


@dataclass(frozen=True)
class Site:
    lat: float
    lon: float
    lez: bool
    busy: float = 1.0
    """Scales traffic: a main road vs a side street."""
    lez_from: float | None = None

    def lez_active(self, t: float) -> bool:
        return self.lez and self.lez_from is not None and t >= self.lez_from

    def vehicles_per_min(self, t: float) -> tuple[float, float, float, float]:
        """Mean vehicles per minute per direction, by class: motorcycle, car, van, heavy."""
        base = 18.0 * self.busy * traffic_shape(t)
        mix = [0.04, 0.78, 0.11, 0.07]
        if self.lez_active(t):
            mix[2] *= LEZ_VAN_FACTOR
            mix[3] *= LEZ_HEAVY_FACTOR
        return (base * mix[0], base * mix[1], base * mix[2], base * mix[3])

    def weather(self, t: float) -> tuple[float, float, float]:
        """Temperature (C), relative humidity (%), pressure (hPa)."""
        day = (t % 86400) / 86400
        season = math.cos(2 * math.pi * ((t / 86400) % 365.25 - 200) / 365.25)
        temp = 10 + 8 * season + 5 * math.sin(2 * math.pi * (day - 0.375))
        rh = min(98.0, max(25.0, 70 - 20 * math.sin(2 * math.pi * (day - 0.375)) + 10 * math.sin(t / 190000)))
        pressure = 1013 + 8 * math.sin(t / 300000)
        return temp, rh, pressure

    def emission_index(self, t: float) -> float:
        """Traffic NOx emissions, heavy vehicles weighing ~10 cars."""
        m, c, v, h = self.vehicles_per_min(t)
        return 0.3 * m + c + 2.5 * v + 10 * h

    def no2(self, t: float) -> float:
        """ug/m3: urban background plus a part proportional to local emissions."""
        return 14 + 1.2 * self.emission_index(t)

    def pm_true(self, t: float) -> tuple[float, float, float]:
        """PM1, PM2.5, PM10 in ug/m3 as a reference (gravimetric) instrument would measure them."""
        pm25 = 8 + 0.25 * self.emission_index(t) + 4 * math.sin(t / 400000) ** 2
        return pm25 * 0.7, pm25, pm25 * 1.6

    def pm(self, t: float) -> tuple[float, float, float]:
        """PM1, PM2.5, PM10 in ug/m3 as an optical sensor reports them (humidity bias included)."""
        _, rh, _ = self.weather(t)
        bias = 1 + 0.25 * max(0.0, rh - 60) / 40 * (1 + max(0.0, rh - 85) / 5)
        pm1, pm25, pm10 = self.pm_true(t)
        return pm1 * bias, pm25 * bias, pm10 * bias

    def co2(self, t: float) -> float:
        return 420 + 2.5 * self.emission_index(t)
