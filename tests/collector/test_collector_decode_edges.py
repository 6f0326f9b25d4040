"""Decoder edges a torture run found: bignums, the ack's cfg, health keys, the self-describe tag."""

from __future__ import annotations

import time

import cbor2
import pytest

from kerbside.collector.decode import SELF_DESCRIBE, Rejected, decode
from knode import wire

DEV = "00c0ffee"
NOW = 1_780_000_000


def _readings(**over: object) -> list[object]:
    msg: list[object] = [1, bytes.fromhex(DEV), 5, 1, 3, NOW - 600, 60, 6, [6, 1, 2, 3, 4, 5, 10000]]
    for i, key in enumerate(("v", "id", "seq", "boot", "flags", "t0", "period", "expected")):
        if key in over:
            msg[i] = over[key]
    return msg


def _reject(topic: str, obj: object) -> Rejected:
    with pytest.raises(Rejected) as e:
        decode(topic, cbor2.dumps(obj), NOW)
    return e.value


@pytest.mark.parametrize(("obj", "reason", "detail"), [
    (_readings(seq=10**5000), "bad_header", "seq=<16610-bit integer> outside 0..4294967295"),
    (_readings(v=-(10**5000)), "unsupported_version", "version -<16610-bit integer>"),
    (_readings(seq=2**64), "bad_header", "seq=<65-bit integer> outside"),
    (_readings(seq=2**40), "bad_header", "seq=1099511627776 outside"),  # small enough to print
])
def test_huge_integers_are_rejected_with_their_size_not_an_internal_error(obj: object, reason: str, detail: str) -> None:
    """A CBOR bignum can have more digits than str() will convert (ValueError past 4300): the detail says its size."""
    e = _reject(wire.topic(DEV, "readings"), obj)
    assert e.reason == reason and e.detail.startswith(detail), e.detail


def test_a_huge_delta_in_a_value_is_out_of_range() -> None:
    obj = _readings()
    obj[8] = [6, 10**5000]
    e = _reject(wire.topic(DEV, "readings"), obj)
    assert e.reason == "value_out_of_range" and "<16610-bit integer>" in e.detail


def _ack(cfg: object) -> dict[object, object]:
    return {"v": 1, "id": bytes.fromhex(DEV), "cmd": 7, "ok": True, "cfg": cfg}


@pytest.mark.parametrize("cfg", [2**70, -1, 2**32])
def test_the_acks_cfg_is_a_uint32(cfg: int) -> None:
    e = _reject(wire.topic(DEV, "ack"), _ack(cfg))
    assert e.reason == "value_out_of_range" and e.detail.startswith("cfg="), e.detail


def test_the_acks_largest_cfg_is_written() -> None:
    d = decode(wire.topic(DEV, "ack"), cbor2.dumps(_ack(2**32 - 1)), NOW)
    assert d.fields["cfg"] == 2**32 - 1 and "cfg=4294967295i" in d.lines[0]


def _status(health: dict[object, object]) -> dict[object, object]:
    return {"v": 1, "id": bytes.fromhex(DEV), "online": True, "health": health}


@pytest.mark.parametrize("key", ["Laser_H", "PM_ERR", "é", "a-b", "", "x" * 25, "laser h"])
def test_health_keys_outside_the_contract_are_rejected(key: str) -> None:
    e = _reject(wire.topic(DEV, "status"), _status({key: 1}))
    assert (e.reason, e.detail) == ("bad_structure", "health keys are [a-z0-9_]{1,24}")


def test_health_keys_of_the_contract_become_fields() -> None:
    d = decode(wire.topic(DEV, "status"), cbor2.dumps(_status({"laser_h": 8000, "pm_err": 0, "x" * 24: 1})), NOW)
    assert (d.fields["health_laser_h"], d.fields["health_pm_err"], d.fields["health_" + "x" * 24]) == (8000, 0, 1)


@pytest.mark.parametrize("kind", ["readings", "status", "ack"])
def test_the_self_describe_tag_changes_nothing(kind: str) -> None:
    """RFC 8949 3.4.6: tag 55799 in front of a message only says "this is CBOR"."""
    now = int(time.time())
    payload = {
        "readings": wire.encode_readings(bytes.fromhex(DEV), 5, 1, True, 1, now - 600, 60, 6, [(6, [1, 2, 3, 4, 5, 10000])] * 2),
        "status": wire.encode_status({"v": 1, "id": bytes.fromhex(DEV), "online": True, "t": now - 5, "synced": True}),
        "ack": wire.encode_status({"v": 1, "id": bytes.fromhex(DEV), "cmd": 3, "ok": True, "t": now - 5, "synced": True}),
    }[kind]
    plain = decode(wire.topic(DEV, kind), payload, now)
    tagged = decode(wire.topic(DEV, kind), SELF_DESCRIBE + payload, now)
    assert tagged.lines == plain.lines and tagged.lines
    assert cbor2.loads(SELF_DESCRIBE + payload) is not None  # what a CBOR tool makes of it: still the message
