"""Wire contract v1 as data: topics, channels, limits and rejection reasons.

docs/wire/README.md is the prose of this module; docs/wire/vectors.json holds
both sides to it. Changing anything here is a wire-format change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VERSION = 1
PREFIX = "kerbside/v1/"
KINDS = ("readings", "status", "cmd", "ack")
TOPIC_RE = re.compile(r"^kerbside/v1/([0-9a-f]{8})/(readings|status|ack|cmd)$")
DEVICE_RE = re.compile(r"^[0-9a-f]{8}$")

MAX_PAYLOAD = 8192
"""Bytes. A full batch of 240 traffic readings stays under half of this."""
MAX_READINGS = 240
MAX_FUTURE_S = 300
"""Node clocks drift; five minutes ahead is tolerated, more means a bad clock."""
MAX_AGE_S = 400 * 86400
"""Older than the raw retention policy: InfluxDB would drop it anyway."""
MAX_PERIOD_S = 86400
MAX_EXPECTED = 3600
U32 = 0xFFFFFFFF

KIT_AIR = 1
KIT_TRAFFIC = 2
KIT_NAMES = {KIT_AIR: "air", KIT_TRAFFIC: "traffic"}


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    scale: int
    """The wire int is the value in `unit` times `scale`."""
    unit: str
    lo: int
    hi: int
    """Inclusive limits of the wire int; outside them the sensor or the units are wrong."""


AIR_CHANNELS: tuple[Channel, ...] = (
    Channel("pm1", 10, "µg/m³", 0, 20000),
    Channel("pm25", 10, "µg/m³", 0, 20000),
    Channel("pm10", 10, "µg/m³", 0, 20000),
    Channel("temp", 10, "°C", -500, 850),
    Channel("rh", 10, "%", 0, 1000),
    Channel("pressure", 10, "hPa", 3000, 11000),
    Channel("no2", 10, "µg/m³", -1000, 20000),
    Channel("co2", 1, "ppm", 0, 40000),
)

TRAFFIC_CLASSES = ("motorcycle", "car", "van", "heavy")
TRAFFIC_DIRECTIONS = ("in", "out")
TRAFFIC_CHANNELS: tuple[Channel, ...] = tuple(
    Channel(f"{d}_{c}", 1, "vehicles", 0, 10000) for d in TRAFFIC_DIRECTIONS for c in TRAFFIC_CLASSES
) + tuple(Channel(f"{d}_speed", 10, "km/h", 0, 3000) for d in TRAFFIC_DIRECTIONS)

CHANNELS = {KIT_AIR: AIR_CHANNELS, KIT_TRAFFIC: TRAFFIC_CHANNELS}

# Stable rejection reason codes. Never renumber or rename: operators alert on
# them and the dead-letter store keeps them for years.
REASONS: dict[str, str] = {
    "oversize": f"payload larger than {MAX_PAYLOAD} bytes",
    "bad_topic": "topic is not kerbside/v1/<8 hex device id>/readings|status|ack",
    "cbor_malformed": "payload is not well-formed CBOR (truncated, trailing bytes, reserved values)",
    "bad_structure": "well-formed CBOR of the wrong shape or types",
    "unsupported_version": "format version is not 1",
    "device_mismatch": "device id in the payload differs from the one in the topic",
    "unknown_kit": "kit code in flags is neither air (1) nor traffic (2)",
    "bad_header": "sequence, boot, flags, period or expected samples out of range",
    "batch_size": f"a readings message holds 1..{MAX_READINGS} readings",
    "value_not_integer": "a value is a float, NaN, bool or string instead of a scaled int",
    "value_out_of_range": "a value is outside its channel's physical range (often wrong units)",
    "negative_count": "a vehicle count is negative",
    "capture_invalid": "samples taken is more than samples expected",
    "time_future": f"a reading is more than {MAX_FUTURE_S} s ahead of the collector's clock",
    "time_past": f"a reading is older than {MAX_AGE_S // 86400} days",
    "unknown_device": "device is not in the registry",
    "decommissioned": "device is decommissioned in the registry",
    "influx_rejected": "InfluxDB refused the line (e.g. field type conflict)",
}
