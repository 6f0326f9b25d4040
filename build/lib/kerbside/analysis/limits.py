"""EU 2030 limit values, WHO 2021 guidelines and the data-capture rules, loaded from limits.json.

The numbers live in a data file, not in code, so a city can review them against
the legal text (and a future revision only changes data). Exceedance means
strictly above the value, as in the Directive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LIMITS_FILE = Path(__file__).with_name("limits.json")
POLLUTANTS = ("pm25", "pm10", "no2")


@dataclass(frozen=True)
class Limit:
    scheme: str
    """"EU2030" (legally binding from 2030) or "WHO2021" (health guideline)."""
    pollutant: str
    averaging: str
    """"hour", "day" or "year"."""
    value: float
    max_exceedances: int | None
    """Allowed exceedances per calendar year; None for annual means."""


@dataclass(frozen=True)
class CaptureRules:
    hour_min_fraction: float
    day_min_valid_hours: int
    year_min_fraction: float


@cache
def _doc() -> dict:
    return json.loads(LIMITS_FILE.read_text())


def limits(scheme: str | None = None) -> list[Limit]:
    return [Limit(**row) for row in _doc()["limits"] if scheme is None or row["scheme"] == scheme]


def limit(scheme: str, pollutant: str, averaging: str) -> Limit | None:
    return next((x for x in limits(scheme) if x.pollutant == pollutant and x.averaging == averaging), None)


def capture_rules() -> CaptureRules:
    c = _doc()["capture"]
    return CaptureRules(c["hour_min_fraction"], c["day_min_valid_hours"], c["year_min_fraction"])


NO2_PPB_TO_UGM3: float = _doc()["no2_conversion"]["ppb_to_ugm3"]


def no2_ppb_to_ugm3(ppb: float) -> float:
    """NO2 mixing ratio to mass concentration at the EU reference conditions (20 °C, 101.3 kPa)."""
    return ppb * NO2_PPB_TO_UGM3
