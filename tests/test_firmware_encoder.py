"""The firmware side of the wire contract: byte-identical payloads, on CPython and on MicroPython."""

from __future__ import annotations

import json

import pytest

from knode import cbor, wire


def _encode(inp: dict) -> bytes:
    if "readings" in inp:
        r = inp["readings"]
        return wire.encode_readings(bytes.fromhex(r["device"]), r["seq"], r["boot"], r["synced"], r["kit"],
                                    r["t0"], r["period"], r["expected"], [(s, v) for s, v in r["readings"]])
    (m,) = inp.values()
    return wire.encode_status({**m, "id": bytes.fromhex(m["id"])})


def test_cpython_encoder_matches_every_valid_vector(vectors: list[dict]) -> None:
    checked = 0
    for v in vectors:
        if v["valid"]:
            assert _encode(v["input"]).hex() == v["payload_hex"], v["name"]
            checked += 1
    assert checked >= 20


def test_cbor_decoder_round_trips_commands() -> None:
    cmd = {"cmd": 7, "op": "set_interval", "args": {"period": 300}, "cfg": 4, "sha": b"\x01" * 32, "ok": None}
    assert cbor.loads(cbor.dumps(cmd)) == cmd
    for bad in (b"", b"\x18", b"\x9f\x01\xff", b"\x01\x02", b"\xf9\x00\x00"):
        with pytest.raises(cbor.CBORError):
            cbor.loads(bad)


def test_encoder_rejects_what_the_contract_forbids() -> None:
    with pytest.raises(ValueError):
        wire.encode_readings(b"\x00" * 4, 0, 0, True, 1, 0, 60, 6, [])
    with pytest.raises(ValueError):
        wire.encode_readings(b"\x00" * 4, 0, 0, True, 1, 0, 60, 6, [(6, [1] * 9)])


@pytest.mark.mpy
def test_micropython_encoder_matches_every_valid_vector(vectors: list[dict], micropython) -> None:
    cases = [(v["name"], v["input"], v["payload_hex"]) for v in vectors if v["valid"]]
    script = (
        "import json, binascii, gc\n"
        "from knode import wire\n"
        f"cases = json.loads({json.dumps(json.dumps(cases))})\n"
        "gc.collect()\n"
        "ok = 0\n"
        "for name, inp, want in cases:\n"
        "    if 'readings' in inp:\n"
        "        r = inp['readings']\n"
        "        got = wire.encode_readings(binascii.unhexlify(r['device']), r['seq'], r['boot'], r['synced'],\n"
        "                                   r['kit'], r['t0'], r['period'], r['expected'], r['readings'])\n"
        "    else:\n"
        "        m = list(inp.values())[0]\n"
        "        m['id'] = binascii.unhexlify(m['id'])\n"
        "        got = wire.encode_status(m)\n"
        "    h = binascii.hexlify(got).decode()\n"
        "    print(name, 'OK' if h == want else 'MISMATCH ' + h)\n"
    )
    res = micropython.run(script, heap=100 * 1024).check()
    lines = res.stdout.split("\n")
    assert [ln for ln in lines if "MISMATCH" in ln] == []
    assert sum(ln.endswith(" OK") for ln in lines) == len(cases)
