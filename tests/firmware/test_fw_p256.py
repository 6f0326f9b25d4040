"""The node's ECDSA P-256 verifier (knode.p256) against `cryptography`, in CPython and in the MicroPython VM.

Signatures come from `cryptography`; the node's verifier must accept exactly
those and refuse every alteration: another key, a flipped bit of the message or
the signature, the high-S twin of a valid signature, r or s of 0, n or more,
and public keys that are not points of the curve. Run in the VM, the same
vectors give the same verdicts, and the time of one verification is measured.
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from kerbside.core import release as rel
from knode import p256

N = p256.N


def _vectors(count: int, seed: int) -> list[dict]:
    """Each vector: key, message digest, signature and the verdict `cryptography` gives."""
    rng = random.Random(seed)
    other = rel.new_key()
    out = []
    for i in range(count):
        key = rel.new_key()
        pub = rel.point(key)
        msg = rng.randbytes(rng.randrange(1, 200))
        sig = rel.sign(key, msg)  # over CONTEXT + msg, low-S
        digest = hashlib.sha256(rel.CONTEXT + msg).digest()
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        flip = bytearray(sig)
        flip[rng.randrange(64)] ^= 1 << rng.randrange(8)
        cases = [
            ("valid", pub, digest, sig),
            ("other key", rel.point(other), digest, sig),
            ("other message", pub, hashlib.sha256(rel.CONTEXT + msg + b"x").digest(), sig),
            ("flipped signature bit", pub, digest, bytes(flip)),
            ("high S", pub, digest, r.to_bytes(32, "big") + (N - s).to_bytes(32, "big")),
            ("r = 0", pub, digest, bytes(32) + sig[32:]),
            ("s = 0", pub, digest, sig[:32] + bytes(32)),
            ("r = n", pub, digest, N.to_bytes(32, "big") + sig[32:]),
            ("r + n", pub, digest, ((r + N) % 2**256).to_bytes(32, "big") + sig[32:]),
            ("s = n", pub, digest, sig[:32] + N.to_bytes(32, "big")),
            ("short", pub, digest, sig[:63]),
        ]
        for name, k, d, sg in cases[: 11 if i < 3 else 4]:  # every edge case on a few keys, the common ones on all
            out.append({"name": name, "key": k, "digest": d, "sig": sg,
                        "ok": _cryptography_says(k, d, sg) if name != "high S" else False})
    return out


def _cryptography_says(key: bytes, digest: bytes, sig: bytes) -> bool:
    """cryptography's verdict on a prehashed digest (it accepts high S; kerbside's rule refuses it)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

    if len(sig) != 64:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False  # cryptography rejects these too, but some versions raise instead of saying no
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
    try:
        pub.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


@pytest.fixture(scope="module")
def vectors() -> list[dict]:
    return _vectors(20, 11)


def test_the_curve_constants_are_p256() -> None:
    one = ec.derive_private_key(1, ec.SECP256R1())
    assert rel.point(one) == b"\x04" + p256.G[0].to_bytes(32, "big") + p256.G[1].to_bytes(32, "big")
    minus_one = ec.derive_private_key(N - 1, ec.SECP256R1())  # (n - 1) G = -G: n is the group order
    assert rel.point(minus_one) == b"\x04" + p256.G[0].to_bytes(32, "big") + (p256.P - p256.G[1]).to_bytes(32, "big")
    assert p256.public_key(rel.point(one)) == p256.G


def test_verdicts_agree_with_cryptography(vectors: list[dict]) -> None:
    got = [p256.verify(p256.public_key(v["key"]), v["digest"], v["sig"]) for v in vectors]
    assert got == [v["ok"] for v in vectors]
    assert sum(got) == 20 and len(got) == 3 * 11 + 17 * 4  # every valid one accepted, nothing else
    high_s = [v for v in vectors if v["name"] == "high S"]
    assert all(_cryptography_says(v["key"], v["digest"], v["sig"]) for v in high_s)  # mathematically valid...
    assert not any(p256.verify(p256.public_key(v["key"]), v["digest"], v["sig"]) for v in high_s)  # ...refused


def test_signatures_from_the_release_tool_are_low_s_and_check_with_both() -> None:
    key = rel.new_key()
    for i in range(30):
        sig = rel.sign(key, b"manifest %d" % i)
        assert int.from_bytes(sig[32:], "big") <= p256.HALF_N
        assert rel.check_signature(rel.point(key), b"manifest %d" % i, sig)
        assert not rel.check_signature(rel.point(key), b"manifest %d!" % i, sig)


@pytest.mark.parametrize(("key", "why"), [
    (b"\x04" + bytes(64), "not a P-256 point"),
    (b"\x04" + p256.G[0].to_bytes(32, "big") + (p256.G[1] ^ 1).to_bytes(32, "big"), "not a P-256 point"),
    (b"\x04" + p256.P.to_bytes(32, "big") + p256.G[1].to_bytes(32, "big"), "not a P-256 point"),
    (b"\x02" + p256.G[0].to_bytes(32, "big"), "need 65 bytes"),
    (b"\x03" + bytes(64), "need 65 bytes"),
])
def test_public_keys_off_the_curve_are_refused(key: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        p256.public_key(key)


VM_SCRIPT = """
import hashlib, json, time
from knode import p256
V = json.loads(VECTORS)
got = []
for v in V:
    got.append(p256.verify(p256.public_key(bytes.fromhex(v[0])), bytes.fromhex(v[1]), bytes.fromhex(v[2])))
q = p256.public_key(bytes.fromhex(V[0][0]))
d = bytes.fromhex(V[0][1])
s = bytes.fromhex(V[0][2])
times = []
for i in range(10):
    t = time.ticks_us()
    ok = p256.verify(q, d, s)
    times.append(time.ticks_diff(time.ticks_us(), t))
    assert ok
print("KS_P256 " + json.dumps({"got": got, "us": times}))
"""


@pytest.mark.mpy
@pytest.mark.services
def test_the_vm_gives_the_same_verdicts_and_its_verify_time(micropython, vectors: list[dict]) -> None:
    rows = [[v["key"].hex(), v["digest"].hex(), v["sig"].hex()] for v in vectors]
    script = f"VECTORS = {json.dumps(rows)!r}\n" + VM_SCRIPT
    out = micropython.run(script, heap=512 * 1024).check()
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("KS_P256 ")]
    assert len(line) == 1, out.stdout
    r = json.loads(line[0][len("KS_P256 "):])
    assert r["got"] == [v["ok"] for v in vectors]
    us = sorted(r["us"])
    print(f"P-256 verify in the MicroPython VM: median {us[5] / 1000:.1f} ms, min {us[0] / 1000:.1f} ms, "
          f"max {us[-1] / 1000:.1f} ms over 10")
    assert len(us) == 10 and all(t > 0 for t in us)
