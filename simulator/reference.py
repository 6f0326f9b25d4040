"""A reference station the simulator knows the truth of, and low-cost sensors with known errors beside it.

For testing calibration (kerbside calibrate) against something exact: nodes co-located with the
station sit at the same Site, so they see the same air; each reports

    reading = gain * truth + offset + rh * (RH - 50) + temp * (T - 20)

per pollutant (SensorError), instead of the default sensor model (city.Site.pm's nonlinear optical
humidity bias; NO2 as the city makes it). The station reports the truth: hourly means of
Site.no2 and Site.pm_true sampled at the same instants the nodes sample, in the CSV format EU
networks publish (timestamp, pollutant, value). The errors are linear in the truth, RH and T, so a
calibration that recovers them is checking the fit, not luck: calibrate finds slope = 1/gain and
intercept, RH and T terms from which gain and offset come back (tests/analysis/test_an_calibration.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kerbside.simulator.city import Site

RH0, T0 = 50.0, 20.0
"""Conditions at which a sensor's offset is stated."""


@dataclass(frozen=True)
class SensorError:
    gain: float = 1.0
    offset: float = 0.0
    """ug/m3 at RH0 and T0."""
    rh: float = 0.0
    """ug/m3 per % relative humidity above RH0."""
    temp: float = 0.0
    """ug/m3 per degree C above T0."""

    def reading(self, truth: float, rh: float, temp: float) -> float:
        return self.gain * truth + self.offset + self.rh * (rh - RH0) + self.temp * (temp - T0)


@dataclass(frozen=True)
class ReferenceStation:
    """Where the station stands and the errors of the nodes placed beside it (one dict per node)."""

    lat: float = 48.1900
    lon: float = 16.3350
    """Outside the simulated LEZ: an urban background site, as most reference stations are."""
    busy: float = 1.0
    sensors: tuple[dict[str, SensorError], ...] = field(default_factory=tuple)
    """Per co-located air node: pollutant (no2, pm25, pm10) -> its error. The first len(sensors) air nodes
    of the fleet are co-located."""


class SensedSite:
    """A Site as a low-cost node with known sensor errors sees it; everything else is the Site's."""

    def __init__(self, site: Site, errors: dict[str, SensorError]) -> None:
        self.site = site
        self.errors = errors

    def __getattr__(self, name: str) -> Any:
        return getattr(self.site, name)

    def no2(self, t: float) -> float:
        e = self.errors.get("no2")
        if e is None:
            return self.site.no2(t)
        temp, rh, _ = self.site.weather(t)
        return e.reading(self.site.no2(t), rh, temp)

    def pm(self, t: float) -> tuple[float, float, float]:
        if "pm25" not in self.errors and "pm10" not in self.errors:
            return self.site.pm(t)
        temp, rh, _ = self.site.weather(t)
        _, pm25, pm10 = self.site.pm_true(t)
        p25 = self.errors.get("pm25", SensorError()).reading(pm25, rh, temp)
        p10 = self.errors.get("pm10", SensorError()).reading(pm10, rh, temp)
        return p25 * 0.7, p25, p10


def truth(site: Site, t: float) -> dict[str, float]:
    _, pm25, pm10 = site.pm_true(t)
    return {"no2": site.no2(t), "pm25": pm25, "pm10": pm10}


def hourly(site: Site, start: float, end: float, sample: int = 60) -> list[tuple[datetime, str, float]]:
    """The station's hourly means for whole UTC hours in [start, end): the truth sampled every `sample` s
    from each hour's start, as the nodes sample (firmware: one sample at each interval's start + k*sample)."""
    first = int(-(-start // 3600) * 3600)
    rows = []
    for h in range(first, int(end) - 3599, 3600):
        acc: dict[str, float] = {"no2": 0.0, "pm25": 0.0, "pm10": 0.0}
        n = 3600 // sample
        for k in range(n):
            for p, v in truth(site, h + k * sample).items():
                acc[p] += v
        when = datetime.fromtimestamp(h, UTC)
        rows += [(when, p, acc[p] / n) for p in ("no2", "pm25", "pm10")]
    return rows
