"""Property tests: what the firmware encodes, the collector decodes; nothing else escapes."""

from __future__ import annotations

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kerbside.collector.decode import Rejected, decode
from kerbside.core import contract
from knode import wire

NOW = 1767225600
DEV = bytes.fromhex("00c0ffee")
TOPIC = "kerbside/v1/00c0ffee/readings"


def _value(ch: contract.Channel) -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), st.integers(ch.lo, ch.hi))


@st.composite
def messages(draw: st.DrawFn) -> tuple[int, int, int, int, bool, list]:
    kit = draw(st.sampled_from([contract.KIT_AIR, contract.KIT_TRAFFIC]))
    chans = contract.CHANNELS[kit]
    expected = draw(st.integers(1, 120))
    n = draw(st.integers(1, 12))
    rows = [(draw(st.integers(0, expected)), [draw(_value(ch)) for ch in chans]) for _ in range(n)]
    seq = draw(st.integers(0, contract.U32 - n + 1))
    period = draw(st.integers(1, 3600))
    synced = draw(st.booleans())
    return kit, seq, period, expected, synced, rows


def _fields(line: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in line.split(" ")[1].split(","))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.integers(0, 1000))
def test_encode_then_decode_round_trips(msg: tuple, boot: int) -> None:
    kit, seq, period, expected, synced, rows = msg
    t0 = NOW - 10 * 86400
    payload = wire.encode_readings(DEV, seq, boot, synced, kit, t0, period, expected, rows)
    d = decode(TOPIC, payload, NOW)
    assert (d.seq, d.count, d.boot, d.synced, d.period, d.t0) == (seq, len(rows), boot, synced, period, t0)
    if kit == contract.KIT_AIR:
        assert len(d.lines) == len(rows)
        for k, (line, (samples, vals)) in enumerate(zip(d.lines, rows, strict=True)):
            f = _fields(line)
            assert f["seq"] == f"{seq + k}i" and f["samples"] == f"{samples}i"
            assert line.endswith(f" {(t0 + k * period) * 10**9}")
            for ch, v in zip(contract.AIR_CHANNELS, vals, strict=True):
                if v is None:
                    assert ch.name not in f
                else:
                    assert round(float(f[ch.name]) * ch.scale) == v
    else:
        flows = [ln for ln in d.lines if ln.startswith("traffic_flow")]
        assert len(flows) == 2 * len(rows)
        counts = [ln for ln in d.lines if not ln.startswith("traffic_flow")]
        assert len(counts) == sum(v is not None for _, vals in rows for v in vals[:8])


@settings(max_examples=2000)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_reject(data: bytes) -> None:
    try:
        decode(TOPIC, data, NOW)
    except Rejected as e:
        assert e.reason in contract.REASONS


_cbor_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.binary(max_size=8),
                       st.text(max_size=8))
_cbor_any = st.recursive(_cbor_leaf, lambda inner: st.one_of(st.lists(inner, max_size=12),
                                                             st.dictionaries(st.text(max_size=4), inner, max_size=6)),
                         max_leaves=40)


@settings(max_examples=200)
@given(st.lists(_cbor_any, min_size=0, max_size=12), st.sampled_from(["readings", "status", "ack"]))
def test_wellformed_cbor_of_any_shape_only_ever_rejects_or_decodes(items: list, kind: str) -> None:
    """Structure-aware fuzz: valid headers with arbitrary tails, or arbitrary arrays/maps."""
    header = [1, DEV, 5, 1, 3, NOW - 60, 60, 6]
    for obj in (items, header + items, dict(enumerate(items))):
        try:
            d = decode(f"kerbside/v1/00c0ffee/{kind}", cbor2.dumps(obj), NOW)
        except Rejected as e:
            assert e.reason in contract.REASONS
        else:
            assert d.lines and all(ln.count(" ") >= 2 for ln in d.lines)


def test_deep_nesting_is_a_rejection_not_a_crash() -> None:
    for depth in (100, 5000, 100000):
        payload = b"\x81" * depth + b"\x00"
        try:
            decode(TOPIC, payload[: contract.MAX_PAYLOAD], NOW)
        except Rejected as e:
            assert e.reason in ("cbor_malformed", "bad_structure", "oversize")
