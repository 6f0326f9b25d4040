"""Decode and validate one MQTT message into InfluxDB line protocol.

Pure and I/O-free so that the collector, `kerbside decode`, the fuzzers and
the vectors all exercise exactly the same code. Every failure is a `Rejected`
with a stable reason code from `kerbside.core.contract.REASONS`; nothing else
may escape, whatever the bytes. Lines are rendered by kerbside.core.lineproto;
readings, the hot path, build each message's series keys once with it and
format their fields with its number renderers.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import cbor2

from kerbside.core import contract as c
from kerbside.core import lineproto as lp
from kerbside.core.errors import ContractError

_NS = 1_000_000_000
SELF_DESCRIBE = b"\xd9\xd9\xf7"
"""Tag 55799 (self-described CBOR) in front of a message."""


class Rejected(ContractError):
    """A message the collector must dead-letter, with the reason it gives operators."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in c.REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Decoded:
    device: str
    kind: str
    lines: list[str]
    seq: int = -1
    """First sequence number of a readings message; readings are seq..seq+count-1."""
    count: int = 0
    boot: int = -1
    synced: bool = True
    t0: int = 0
    period: int = 0
    online: bool | None = None
    fields: dict[str, lp.FieldValue] = field(default_factory=dict)
    """Status/ack content, for the collector's online view."""


def parse_topic(topic: str) -> tuple[str, str]:
    m = c.TOPIC_RE.match(topic)
    if m is None or m.group(2) == "cmd":
        raise Rejected("bad_topic", repr(topic[:200]))
    return m.group(1), m.group(2)


def decode(topic: str, payload: bytes, now: float, tags: Mapping[str, str] | None = None) -> Decoded:
    """Turn (topic, payload) into points, or raise Rejected.

    now is the collector's clock (unix seconds) for the time-window checks and
    for status messages that carry no node time. tags are extra low-cardinality
    tags from the device registry (site, zone, kit).
    """
    if len(payload) > c.MAX_PAYLOAD:
        raise Rejected("oversize", f"{len(payload)} bytes")
    device, kind = parse_topic(topic)
    if payload.startswith(SELF_DESCRIBE):
        payload = payload[len(SELF_DESCRIBE):]  # RFC 8949 3.4.6: marks the bytes as CBOR and means nothing else
    try:
        fp = io.BytesIO(payload)
        obj = cbor2.CBORDecoder(fp).decode()
        if fp.tell() != len(payload):
            raise Rejected("cbor_malformed", f"{len(payload) - fp.tell()} trailing bytes")
    except Rejected:
        raise
    except RecursionError as e:
        raise Rejected("cbor_malformed", "nested too deeply") from e
    except Exception as e:  # cbor2 raises several types for bad input
        raise Rejected("cbor_malformed", str(e)[:200]) from e
    alltags = {"device": device, **(tags or {})}
    if kind == "readings":
        return _readings(device, obj, now, alltags)
    if kind == "status":
        return _status(device, obj, now, alltags)
    return _ack(device, obj, now, alltags)


def _is_int(v: object) -> bool:
    return type(v) is int


def _num(v: int) -> str:
    """An integer for a rejection's detail. A CBOR bignum can have more digits than str() converts (a ValueError
    past 4300), and a detail of a million digits helps nobody: past 18 digits, say how big it is."""
    if -10**18 < v < 10**18:
        return str(v)
    return f"{'-' if v < 0 else ''}<{v.bit_length()}-bit integer>"


def _uint(v: object, name: str, hi: int = c.U32, lo: int = 0) -> int:
    if not _is_int(v):
        raise Rejected("bad_structure", f"{name} must be an integer")
    assert isinstance(v, int)
    if not lo <= v <= hi:
        raise Rejected("bad_header", f"{name}={_num(v)} outside {lo}..{hi}")
    return v


def _check_device(device: str, raw: object) -> None:
    if not isinstance(raw, bytes) or len(raw) != 4:
        raise Rejected("bad_structure", "device id must be 4 bytes")
    if raw.hex() != device:
        raise Rejected("device_mismatch", f"payload {raw.hex()} vs topic {device}")


def _readings(device: str, obj: object, now: float, tags: dict[str, str]) -> Decoded:
    if not isinstance(obj, list) or len(obj) < 8:
        raise Rejected("bad_structure", "readings message must be an array of at least 8 items")
    version = obj[0]
    if not _is_int(version):
        raise Rejected("bad_structure", "version must be an integer")
    if version != c.VERSION:
        raise Rejected("unsupported_version", f"version {_num(version)}")
    _check_device(device, obj[1])
    seq = _uint(obj[2], "seq")
    boot = _uint(obj[3], "boot")
    flags = _uint(obj[4], "flags", hi=0xFF)
    t0 = _uint(obj[5], "t0")
    period = _uint(obj[6], "period", hi=c.MAX_PERIOD_S, lo=1)
    expected = _uint(obj[7], "expected", hi=c.MAX_EXPECTED, lo=1)
    kit = (flags >> 1) & 0x7
    if flags & ~0xF:
        raise Rejected("bad_header", f"reserved flag bits set in {flags:#x}")
    if kit not in c.CHANNELS:
        raise Rejected("unknown_kit", f"kit {kit}")
    synced = bool(flags & 1)
    readings = obj[8:]
    n = len(readings)
    if not 1 <= n <= c.MAX_READINGS:
        raise Rejected("batch_size", f"{n} readings")
    if seq + n - 1 > c.U32:
        raise Rejected("bad_header", "sequence numbers overflow 32 bits")
    t_last = t0 + (n - 1) * period
    if synced:
        if t_last > now + c.MAX_FUTURE_S:
            raise Rejected("time_future", f"last reading at {t_last}, collector clock {int(now)}")
        if t0 < now - c.MAX_AGE_S:
            raise Rejected("time_past", f"first reading at {t0}, collector clock {int(now)}")
    elif t_last > c.U32:
        raise Rejected("bad_header", "unsynced time overflows 32 bits")
    channels = c.CHANNELS[kit]
    rows = _values(readings, channels, expected, kit == c.KIT_TRAFFIC)
    suffix = "" if synced else "_unsynced"
    if kit == c.KIT_AIR:
        lines = _air_lines(rows, suffix, tags, seq, boot, t0, period, expected)
    else:
        lines = _traffic_lines(rows, suffix, tags, seq, boot, t0, period, expected)
    return Decoded(device, "readings", lines, seq, n, boot, synced, t0, period)


def _values(
    readings: list[object], channels: tuple[c.Channel, ...], expected: int, counts: bool
) -> list[tuple[int, list[int | None]]]:
    """Undo the per-channel delta coding and check every absolute value."""
    nch = len(channels)
    last: list[int | None] = [None] * nch
    rows: list[tuple[int, list[int | None]]] = []
    for r in readings:
        if not isinstance(r, list) or not r:
            raise Rejected("bad_structure", "a reading must be a non-empty array")
        if len(r) > nch + 1:
            raise Rejected("bad_structure", f"{len(r) - 1} values for a kit of {nch} channels")
        samples = r[0]
        if not _is_int(samples):
            raise Rejected("value_not_integer", "samples")
        assert isinstance(samples, int)
        if samples < 0 or samples > expected:
            raise Rejected("capture_invalid", f"{_num(samples)} samples of {expected}")
        vals: list[int | None] = [None] * nch
        for i in range(len(r) - 1):
            v = r[i + 1]
            if v is None:
                continue
            ch = channels[i]
            if not _is_int(v):
                what = "NaN" if isinstance(v, float) and math.isnan(v) else type(v).__name__
                raise Rejected("value_not_integer", f"{ch.name} is {what}")
            assert isinstance(v, int)
            prev = last[i]
            absval = v if prev is None else prev + v
            if absval < ch.lo or absval > ch.hi:
                if counts and absval < 0 and ch.unit == "vehicles":
                    raise Rejected("negative_count", f"{ch.name}={_num(absval)}")
                raise Rejected("value_out_of_range", f"{ch.name}={_num(absval)} not in {ch.lo}..{ch.hi}")
            vals[i] = last[i] = absval
        rows.append((samples, vals))
    return rows


# Field keys in line-protocol order (sorted), each with its channel index or a negative marker.
_AIR_ORDER = sorted(
    [(lp.escape_name(ch.name), i) for i, ch in enumerate(c.AIR_CHANNELS)]
    + [("boot", -1), ("capture", -2), ("samples", -3), ("seq", -4)]
)
_AIR_SCALES = tuple(ch.scale for ch in c.AIR_CHANNELS)
# Per direction: the (class, position) of each vehicle count, and the position and scale of the mean speed.
_TRAFFIC_LAYOUT = tuple(
    (d, tuple((cls, c.TRAFFIC_COUNT_INDEX[d, cls]) for cls in c.TRAFFIC_CLASSES),
     c.TRAFFIC_SPEED_INDEX[d], c.TRAFFIC_CHANNELS[c.TRAFFIC_SPEED_INDEX[d]].scale)
    for d in c.TRAFFIC_DIRECTIONS
)
# The tags a traffic reading adds to the device's, escaped once: (direction, class or None) -> escaped tags.
_TRAFFIC_TAGS = {(d, cls): lp.escape_tags({"direction": d, "class": cls})
                 for d in c.TRAFFIC_DIRECTIONS for cls in (None, *c.TRAFFIC_CLASSES)}
_MEASUREMENTS = {(m, suffix): lp.escape_measurement(m + suffix)
                 for m in ("air", "traffic", "traffic_flow") for suffix in ("", "_unsynced")}


def _air_lines(rows, suffix, tags, seq, boot, t0, period, expected) -> list[str]:  # type: ignore[no-untyped-def]
    head = lp.series_of(_MEASUREMENTS["air", suffix], lp.escape_tags(tags)) + " "
    lines = []
    scales = _AIR_SCALES
    for k, (samples, vals) in enumerate(rows):
        parts = []
        for name, i in _AIR_ORDER:
            if i >= 0:
                v = vals[i]
                if v is not None:
                    parts.append(f"{name}={lp.scaled(v, scales[i])}")
            elif i == -1:
                parts.append(f"boot={boot}i")
            elif i == -2:
                parts.append(f"capture={lp.ratio(samples, expected)}")
            elif i == -3:
                parts.append(f"samples={samples}i")
            else:
                parts.append(f"seq={seq + k}i")
        lines.append(f"{head}{','.join(parts)} {(t0 + k * period) * _NS}")
    return lines


def _traffic_lines(rows, suffix, tags, seq, boot, t0, period, expected) -> list[str]:  # type: ignore[no-untyped-def]
    device_tags = lp.escape_tags(tags)  # escaped once, then extended with each direction and class
    flow, count = _MEASUREMENTS["traffic_flow", suffix], _MEASUREMENTS["traffic", suffix]
    heads: dict[object, str] = {}
    for (d, cls), extra in _TRAFFIC_TAGS.items():
        if cls is None:
            heads[d] = lp.series_of(flow, {**device_tags, **extra}) + " "
        else:
            heads[d, cls] = lp.series_of(count, {**device_tags, **extra}) + " "
    lines = []
    for k, (samples, vals) in enumerate(rows):
        ts = (t0 + k * period) * _NS
        capture = lp.ratio(samples, expected)
        for d, counts, speed_at, speed_scale in _TRAFFIC_LAYOUT:
            total = None
            for cls, i in counts:
                v = vals[i]
                if v is not None:
                    lines.append(f"{heads[d, cls]}count={v}i {ts}")
                    total = v if total is None else total + v
            speed = vals[speed_at]
            parts = [f"boot={boot}i", f"capture={capture}", f"interval={period}i", f"samples={samples}i", f"seq={seq + k}i"]
            if speed is not None:
                parts.append(f"speed={lp.scaled(speed, speed_scale)}")
            if total is not None:
                parts.append(f"vehicles={total}i")
            lines.append(f"{heads[d]}{','.join(parts)} {ts}")
    return lines


_STATUS_INTS = {
    # wire key: (field name, lo, hi)
    "up": ("uptime", 0, c.U32),
    "heap": ("heap", 0, c.U32),
    "rssi": ("rssi", -127, 0),
    "buf": ("buffered", 0, c.U32),
    "drop": ("dropped", 0, c.U32),
    "boot": ("boot", 0, c.U32),
    "seq": ("seq", 0, c.U32),
    "kit": ("kit", 1, 2),
    "cfg": ("config", 0, c.U32),
}
_HEALTH_MAX = 16
_HEALTH_KEY = re.compile(r"[a-z0-9_]{1,24}")


def _status_map(device: str, obj: object) -> dict[object, object]:
    if not isinstance(obj, dict):
        raise Rejected("bad_structure", "status must be a map")
    version = obj.get("v")
    if not _is_int(version):
        raise Rejected("bad_structure", "status needs integer key v")
    if version != c.VERSION:
        raise Rejected("unsupported_version", f"version {_num(version)}")
    _check_device(device, obj.get("id"))
    return obj


def _status(device: str, obj: object, now: float, tags: dict[str, str]) -> Decoded:
    m = _status_map(device, obj)
    online = m.get("online")
    if not isinstance(online, bool):
        raise Rejected("bad_structure", "status needs boolean key online")
    fields: dict[str, lp.FieldValue] = {"online": online}
    for key, (name, lo, hi) in _STATUS_INTS.items():
        if key in m:
            v = m[key]
            if not _is_int(v):
                raise Rejected("value_not_integer", key)
            assert isinstance(v, int)
            if not lo <= v <= hi:
                raise Rejected("value_out_of_range", f"{key}={_num(v)} not in {lo}..{hi}")
            fields[name] = v
    if "fw" in m:
        fw = m["fw"]
        if not isinstance(fw, str) or not 0 < len(fw) <= 32:
            raise Rejected("bad_structure", "fw must be a string of 1..32 characters")
        fields["fw"] = fw
    health = m.get("health", {})
    if not isinstance(health, dict) or len(health) > _HEALTH_MAX:
        raise Rejected("bad_structure", f"health must be a map of at most {_HEALTH_MAX} entries")
    for hk, hv in health.items():
        if not (isinstance(hk, str) and _HEALTH_KEY.fullmatch(hk)):
            raise Rejected("bad_structure", "health keys are [a-z0-9_]{1,24}")
        if not _is_int(hv):
            raise Rejected("value_not_integer", f"health.{hk}")
        assert isinstance(hv, int)
        if not -c.U32 <= hv <= c.U32:
            raise Rejected("value_out_of_range", f"health.{hk}")
        fields[f"health_{hk}"] = hv
    line = lp.line("status", tags, fields, _node_time(m, now))
    return Decoded(device, "status", [line], online=online, fields=fields,
                   boot=fields.get("boot", -1), synced=m.get("synced") is True)  # type: ignore[arg-type]


def _node_time(m: dict[object, object], now: float) -> int:
    """The node's own timestamp when its clock is synced and sane, else ours."""
    t = m.get("t")
    if m.get("synced") is True and _is_int(t):
        assert isinstance(t, int)
        if now - c.MAX_AGE_S <= t <= now + c.MAX_FUTURE_S:
            return t * _NS
    return int(now * _NS) if isinstance(now, float) else now * _NS


def _ack(device: str, obj: object, now: float, tags: dict[str, str]) -> Decoded:
    m = _status_map(device, obj)
    cmd, ok = m.get("cmd"), m.get("ok")
    if not _is_int(cmd) or not isinstance(ok, bool):
        raise Rejected("bad_structure", "ack needs integer cmd and boolean ok")
    assert isinstance(cmd, int)
    if not 0 <= cmd <= c.U32:
        raise Rejected("value_out_of_range", f"cmd={_num(cmd)}")
    fields: dict[str, lp.FieldValue] = {"cmd": cmd, "ok": ok}
    cfg = m.get("cfg")
    if cfg is not None:
        if not _is_int(cfg):
            raise Rejected("value_not_integer", "cfg")
        assert isinstance(cfg, int)
        if not 0 <= cfg <= c.U32:
            raise Rejected("value_out_of_range", f"cfg={_num(cfg)} not in 0..{c.U32}")
        fields["cfg"] = cfg
    err = m.get("err")
    if err is not None:
        if not isinstance(err, str) or len(err) > 200:
            raise Rejected("bad_structure", "err must be a string of at most 200 characters")
        fields["err"] = err
    line = lp.line("ack", tags, fields, _node_time(m, now))
    return Decoded(device, "ack", [line], fields=fields)
