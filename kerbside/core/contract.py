"""Wire contract v1 as data: topics, kits, channels, limits and rejection reasons.

docs/wire/README.md is the prose of this module; docs/wire/vectors.json holds
both sides to it. Changing anything here is a wire-format change.

The kits and the channels' names and order are the firmware's (knode.wire):
the node cannot import this package, so this module imports the node's
tables and adds what only the CPython side needs (scale, unit and range of
each channel, the limits and reason codes). A channel the firmware gains
without a range here, or a range here for a channel the firmware lacks, stops
this module from importing; tests/core/test_contract_drift.py also holds both
to the README's tables, the CDDL and the vectors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from knode import mqtt, wire

VERSION = wire.VERSION
PREFIX = wire.PREFIX
KINDS = ("readings", "status", "cmd", "ack")
TOPIC_RE = re.compile(r"^kerbside/v1/([0-9a-f]{8})/(readings|status|ack|cmd)$")
DEVICE_RE = re.compile(r"^[0-9a-f]{8}$")

MAX_PAYLOAD = wire.MAX_PAYLOAD
"""Bytes. A full batch of 240 traffic readings stays under half of this."""
MAX_TO_NODE = mqtt.MAX_INCOMING
"""Bytes: the largest MQTT packet (remaining length) a node accepts, so the largest command (an OTA chunk) there is."""
MAX_READINGS = wire.MAX_READINGS
MAX_FUTURE_S = 300
"""Node clocks drift; five minutes ahead is tolerated, more means a bad clock."""
MAX_AGE_S = 400 * 86400
"""Older than the raw retention policy: InfluxDB would drop it anyway."""
MAX_PERIOD_S = 86400
MAX_EXPECTED = 3600
U32 = 0xFFFFFFFF

KIT_AIR = wire.KIT_AIR
KIT_TRAFFIC = wire.KIT_TRAFFIC
KIT_NAMES = {code: name for name, code in sorted(wire.KITS.items(), key=lambda kv: kv[1])}
"""Kit code in the readings flags -> the kit's name (registry, node config, the `kit` tag)."""
KITS = tuple(KIT_NAMES.values())

device_bytes = wire.device_bytes
"""8 lowercase hex digits -> the 4 bytes a payload carries (raises ValueError for anything else)."""


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    scale: int
    """The wire int is the value in `unit` times `scale`."""
    unit: str
    lo: int
    hi: int
    """Inclusive limits of the wire int; outside them the sensor or the units are wrong."""

    @property
    def pollutant(self) -> bool:
        """A concentration (µg/m³, ppm): what analysts average with data-capture counts."""
        return self.unit in ("µg/m³", "ppm")


# scale, unit, lo, hi per air channel; the order is the firmware's.
_AIR_SPECS = {
    "pm1": (10, "µg/m³", 0, 20000),
    "pm25": (10, "µg/m³", 0, 20000),
    "pm10": (10, "µg/m³", 0, 20000),
    "temp": (10, "°C", -500, 850),
    "rh": (10, "%", 0, 1000),
    "pressure": (10, "hPa", 3000, 11000),
    "no2": (10, "µg/m³", -1000, 20000),
    "co2": (1, "ppm", 0, 40000),
}
_COUNT_SPEC = (1, "vehicles", 0, 10000)
_SPEED_SPEC = (10, "km/h", 0, 3000)

TRAFFIC_CLASSES: tuple[str, ...] = wire.TRAFFIC_CLASSES
TRAFFIC_DIRECTIONS: tuple[str, ...] = wire.TRAFFIC_DIRECTIONS
_COUNTS = tuple(f"{d}_{c}" for d in TRAFFIC_DIRECTIONS for c in TRAFFIC_CLASSES)
_SPEEDS = tuple(f"{d}_speed" for d in TRAFFIC_DIRECTIONS)

if set(_AIR_SPECS) != set(wire.AIR_CHANNELS) or len(_AIR_SPECS) != len(wire.AIR_CHANNELS):
    raise ImportError(f"air channels differ: knode.wire has {wire.AIR_CHANNELS}, kerbside.core.contract {tuple(_AIR_SPECS)}")
if sorted(wire.TRAFFIC_CHANNELS) != sorted(_COUNTS + _SPEEDS):
    raise ImportError(f"knode.wire's traffic channels {wire.TRAFFIC_CHANNELS} are not one count per direction and "
                      f"class and one speed per direction ({_COUNTS + _SPEEDS}, in any order)")

AIR_CHANNELS: tuple[Channel, ...] = tuple(Channel(name, *_AIR_SPECS[name]) for name in wire.AIR_CHANNELS)
TRAFFIC_CHANNELS: tuple[Channel, ...] = tuple(
    Channel(name, *(_SPEED_SPEC if name in _SPEEDS else _COUNT_SPEC)) for name in wire.TRAFFIC_CHANNELS)
CHANNELS = {KIT_AIR: AIR_CHANNELS, KIT_TRAFFIC: TRAFFIC_CHANNELS}

AIR_POLLUTANTS = tuple(ch.name for ch in AIR_CHANNELS if ch.pollutant)
"""pm1, pm25, pm10, no2, co2: the air channels that are concentrations."""
TRAFFIC_COUNT_INDEX = {(d, c): wire.TRAFFIC_CHANNELS.index(f"{d}_{c}") for d in TRAFFIC_DIRECTIONS for c in TRAFFIC_CLASSES}
"""(direction, class) -> position of that vehicle count in a traffic reading."""
TRAFFIC_SPEED_INDEX = {d: wire.TRAFFIC_CHANNELS.index(f"{d}_speed") for d in TRAFFIC_DIRECTIONS}
"""direction -> position of its mean speed in a traffic reading."""

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
