"""Local calendar days to UTC instants.

Analysts think in local days (a daily mean runs from local midnight to local
midnight, 23 or 25 hours long on DST days); InfluxDB stores UTC. Every date an
analyst types goes through here so the two never get mixed up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kerbside.core.errors import AnalysisError

DEFAULT_TZ = "Europe/Brussels"


class RangeError(AnalysisError, ValueError):
    pass


def zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise RangeError(f"unknown time zone {tz!r}: use an IANA name such as Europe/Brussels or UTC") from e


def local_midnight(day: date, tz: str) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone(tz))


@dataclass(frozen=True)
class LocalRange:
    """Whole local days `first` .. `last`, both inclusive."""

    first: date
    last: date
    tz: str = DEFAULT_TZ

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise RangeError(f"dates the wrong way round: {self.first} is after {self.last}")
        zone(self.tz)

    @property
    def start(self) -> datetime:
        return local_midnight(self.first, self.tz)

    @property
    def end(self) -> datetime:
        """Exclusive: local midnight after the last day."""
        return local_midnight(self.last + timedelta(days=1), self.tz)

    def where(self) -> str:
        """InfluxQL time condition in UTC epoch seconds."""
        return f"time >= {int(self.start.timestamp())}s AND time < {int(self.end.timestamp())}s"

    def hours(self) -> int:
        return int(self.end.timestamp() - self.start.timestamp()) // 3600

    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range((self.last - self.first).days + 1)]


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as e:
        raise RangeError(f"not a date: {text!r} (use YYYY-MM-DD)") from e
