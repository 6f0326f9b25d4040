"""The collector's side of device identity: topic/payload id agreement, the registry, and hostile bytes."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import cbor2
import pytest
from prov_helpers import add_device

from kerbside.collector.decode import Rejected, decode
from kerbside.collector.devices import DeviceTags
from kerbside.core import contract
from kerbside.core.registry import Registry
from kerbside.provisioning import fleet

FUZZ_INPUTS = 10_000


def _valid_readings(vectors: list[dict]) -> dict:
    return next(v for v in vectors if v["valid"] and v["topic"].endswith("/readings"))


def test_payload_claiming_another_device_is_rejected(vectors: list[dict]) -> None:
    v = _valid_readings(vectors)
    payload = bytes.fromhex(v["payload_hex"])
    claimed = v["topic"].split("/")[2]
    assert decode(v["topic"], payload, v["now"]).device == claimed  # the untouched message is fine
    other = "0badf00d"
    with pytest.raises(Rejected) as e:
        decode(f"kerbside/v1/{other}/readings", payload, v["now"])
    assert e.value.reason == "device_mismatch" and claimed in e.value.detail and other in e.value.detail


def test_status_claiming_another_device_is_rejected() -> None:
    payload = cbor2.dumps({"v": 1, "id": bytes.fromhex("00c0ffee"), "online": True})
    assert decode("kerbside/v1/00c0ffee/status", payload, 1.7e9).online is True
    with pytest.raises(Rejected) as e:
        decode("kerbside/v1/0badf00d/status", payload, 1.7e9)
    assert e.value.reason == "device_mismatch"


def test_collector_rejects_a_node_once_decommissioned(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.json")
    add_device(registry, "0d0d0d01", site="Bahnhof")
    tags = DeviceTags(registry.path, check_every_s=0)
    assert tags.tags_for("0d0d0d01") == {"kit": "air", "site": "Bahnhof", "zone": "lez"}
    fleet.decommission(registry, "0d0d0d01", "stolen")
    with pytest.raises(Rejected) as e:
        tags.tags_for("0d0d0d01")
    assert e.value.reason == "decommissioned"
    with pytest.raises(Rejected) as e:
        tags.tags_for("0d0d0d02")
    assert e.value.reason == "unknown_device"


def _mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    b = bytearray(data)
    op = rng.randrange(8)
    if op == 0 and b:  # flip bits
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1 and b:  # overwrite with an interesting byte (CBOR heads, max values)
        b[rng.randrange(len(b))] = rng.choice((0x00, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1F, 0x3B, 0x5F, 0x7F, 0x9F,
                                                0xBF, 0xC0, 0xF4, 0xF5, 0xF6, 0xF7, 0xF9, 0xFA, 0xFB, 0xFF))
    elif op == 2:  # truncate
        del b[rng.randrange(len(b) + 1):]
    elif op == 3:  # insert random bytes
        pos = rng.randrange(len(b) + 1)
        b[pos:pos] = rng.randbytes(rng.randint(1, 8))
    elif op == 4 and b:  # delete a run
        pos = rng.randrange(len(b))
        del b[pos:pos + rng.randint(1, 8)]
    elif op == 5:  # splice with another vector
        other = rng.choice(seeds)
        b = b[:rng.randrange(len(b) + 1)] + other[rng.randrange(len(other) + 1):]
    elif op == 6:  # deep nesting / huge lengths
        b = bytearray(rng.choice((b"\x81" * rng.randint(1, 5000), b"\x9b" + rng.randbytes(8), b"\x5b\xff" + bytes(7),
                                  b"\xbf" * 3000, b"\xd8\x18\x41\x00", b"\xc4\x82\x20\x03")))
    else:  # pure noise
        b = bytearray(rng.randbytes(rng.randint(0, 64)))
    return bytes(b)


def test_fuzzed_payloads_always_end_in_a_counted_rejection(vectors: list[dict]) -> None:
    """10k random and mutated payloads: the decoder accepts or rejects with a known reason, nothing else."""
    rng = random.Random(20261122)
    seeds = [bytes.fromhex(v["payload_hex"]) for v in vectors]
    topics = sorted({v["topic"] for v in vectors}) + ["kerbside/v1/00c0ffee/cmd", "kerbside/v1/00C0FFEE/readings", "x"]
    counts: Counter[str] = Counter()
    for i in range(FUZZ_INPUTS):
        v = vectors[i % len(vectors)]
        payload = _mutate(rng, bytes.fromhex(v["payload_hex"]), seeds)
        if rng.random() < 0.3:
            payload = _mutate(rng, payload, seeds)
        topic = v["topic"] if rng.random() < 0.95 else rng.choice(topics)
        if i % 997 == 0:
            payload = payload + bytes(contract.MAX_PAYLOAD)
        try:
            decode(topic, payload, v["now"])
            counts["accepted"] += 1
        except Rejected as e:
            assert e.reason in contract.REASONS, e.reason
            counts[e.reason] += 1
    assert sum(counts.values()) == FUZZ_INPUTS
    assert counts["cbor_malformed"] > 1000 and counts["bad_structure"] > 100 and counts["oversize"] >= 10
    assert len(counts) >= 10, counts  # the mutations reach deep into validation, not just the CBOR parser
