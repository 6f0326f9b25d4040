# kerbside node firmware - wire contract v1 encoder (docs/wire/README.md).
#
# The node never formats floats: every value is already a scaled int in the
# unit the contract states, so encoding is cheap and byte-exact on the device.
#
# These tables are the contract's one list of kits and channels: the collector
# and the analysts import them through kerbside.core.contract, and
# tests/core/test_contract_drift.py holds them to docs/wire (README, CDDL, vectors).
from knode import cbor

VERSION = 1
KIT_AIR = 1
KIT_TRAFFIC = 2
KITS = {"air": KIT_AIR, "traffic": KIT_TRAFFIC}  # kit name (config, registry, tags) -> code in the flags

# Channel order is part of the contract. The common six-channel air node
# (PM sensor + BME280) fills exactly the first six, so it sends no nulls.
AIR_CHANNELS = ("pm1", "pm25", "pm10", "temp", "rh", "pressure", "no2", "co2")
TRAFFIC_CLASSES = ("motorcycle", "car", "van", "heavy")
TRAFFIC_DIRECTIONS = ("in", "out")
TRAFFIC_CHANNELS = (
    "in_motorcycle", "in_car", "in_van", "in_heavy",
    "out_motorcycle", "out_car", "out_van", "out_heavy",
    "in_speed", "out_speed",
)
CHANNELS = {KIT_AIR: AIR_CHANNELS, KIT_TRAFFIC: TRAFFIC_CHANNELS}

MAX_READINGS = 240
MAX_PAYLOAD = 8192
PREFIX = "kerbside/v1/"
HEX = "0123456789abcdef"


def device_bytes(device_hex):
    """The 4 payload bytes of a device id written as 8 lowercase hex digits (topics, config, registry)."""
    if len(device_hex) != 8 or any(c not in HEX for c in device_hex):
        raise ValueError("device id: need 8 lowercase hex digits, not %r" % (device_hex,))
    return bytes(int(device_hex[i:i + 2], 16) for i in range(0, 8, 2))


def topic(device_hex, kind):
    """kind is one of readings, status, cmd, ack."""
    return PREFIX + device_hex + "/" + kind


def encode_readings(device, seq, boot, synced, kit, t0, period, expected, readings):
    """Encode one readings message.

    device: 4 bytes. readings: a run of consecutive readings, each
    (samples, values) with values a sequence of absolute scaled ints or None in
    the kit's channel order. Reading i is at t0 + i * period with seq + i.
    """
    if not readings or len(readings) > MAX_READINGS:
        raise ValueError("1..%d readings per message" % MAX_READINGS)
    nch = len(CHANNELS[kit])
    buf = bytearray()
    cbor.write_head(buf, 4, 8 + len(readings))
    cbor.encode_into(buf, VERSION)
    cbor.encode_into(buf, bytes(device))
    cbor.encode_into(buf, seq)
    cbor.encode_into(buf, boot)
    cbor.encode_into(buf, (1 if synced else 0) | (kit << 1))
    cbor.encode_into(buf, t0)
    cbor.encode_into(buf, period)
    cbor.encode_into(buf, expected)
    last = [None] * nch
    for samples, values in readings:
        if len(values) > nch:
            raise ValueError("too many values for kit")
        n = len(values)
        while n and values[n - 1] is None:
            n -= 1  # trailing nulls are omitted: canonical and shorter
        cbor.write_head(buf, 4, 1 + n)
        cbor.encode_into(buf, samples)
        for i in range(n):
            v = values[i]
            if v is None:
                buf.append(0xF6)
                continue
            prev = last[i]
            cbor.encode_into(buf, v if prev is None else v - prev)
            last[i] = v
    return bytes(buf)


def encode_status(status):
    """Encode a status map with the keys in CBOR core deterministic order."""
    buf = bytearray()
    _encode_sorted(buf, status)
    return bytes(buf)


def _encode_sorted(buf, obj):
    if isinstance(obj, dict):
        keys = sorted(obj, key=lambda k: (len(k.encode()), k.encode()))
        cbor.write_head(buf, 5, len(keys))
        for k in keys:
            cbor.encode_into(buf, k)
            _encode_sorted(buf, obj[k])
    else:
        cbor.encode_into(buf, obj)
