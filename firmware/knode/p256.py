# kerbside node firmware - ECDSA P-256 / SHA-256 signature verification.
#
# Why it exists: a node must install only firmware signed by the city's
# release key, and MicroPython on the ESP32 has SHA-256 but no public-key
# crypto (no SHA-512 either, so Ed25519 is out). P-256 verification needs only
# big-integer arithmetic, which MicroPython's long ints do.
#
# Only verification lives here: it uses public data, so it needs no constant
# time. Points are Jacobian (X, Y, Z) for x = X/Z^2, y = Y/Z^3, so the loop
# needs no modular inverse; None is the point at infinity. The signature is
# r || s (32 bytes each, big-endian) and must be "low-S" (s <= n/2): the
# signer normalises, so every signature has exactly one accepted encoding.
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
G = (0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
     0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)
HALF_N = N >> 1


def public_key(data):
    """An uncompressed SEC1 point (0x04 || x || y, 65 bytes) -> (x, y); ValueError unless it is on the curve."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != 65 or data[0] != 4:
        raise ValueError("release key: need 65 bytes 0x04 || x || y")
    x = int.from_bytes(data[1:33], "big")
    y = int.from_bytes(data[33:], "big")
    if x >= P or y >= P or (y * y - x * x * x + 3 * x - B) % P:
        raise ValueError("release key: not a P-256 point")
    return (x, y)


def _dbl(pt):
    if pt is None:
        return None
    x, y, z = pt
    if y == 0:
        return None
    d = z * z % P
    g = y * y % P
    beta = x * g % P
    alpha = 3 * (x - d) * (x + d) % P  # 3x^2 + a z^4 with a = -3
    x3 = (alpha * alpha - 8 * beta) % P
    z3 = ((y + z) * (y + z) - g - d) % P  # 2yz
    y3 = (alpha * (4 * beta - x3) - 8 * g * g) % P
    return (x3, y3, z3)


def _add(pt, a):
    """Jacobian pt + affine a."""
    if a is None:
        return pt
    if pt is None:
        return (a[0], a[1], 1)
    x1, y1, z1 = pt
    zz = z1 * z1 % P
    h = (a[0] * zz - x1) % P
    r = (a[1] * z1 * zz - y1) % P
    if h == 0:
        return _dbl(pt) if r == 0 else None
    hh = h * h % P
    hhh = h * hh % P
    v = x1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    return (x3, (r * (v - x3) - y1 * hhh) % P, z1 * h % P)


def _affine(pt):
    if pt is None:
        return None
    zi = pow(pt[2], P - 2, P)
    zi2 = zi * zi % P
    return (pt[0] * zi2 % P, pt[1] * zi2 * zi % P)


def verify(q, digest, sig):
    """True if sig (64 bytes r || s) signs the 32-byte SHA-256 digest under public point q (from public_key)."""
    if len(sig) != 64 or len(digest) != 32:
        return False
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s <= HALF_N):
        return False
    w = pow(s, N - 2, N)
    e = int.from_bytes(digest, "big")  # a 256-bit digest for a 256-bit order: no truncation
    u1 = e * w % N
    u2 = r * w % N
    table = (None, G, q, _affine(_add((G[0], G[1], 1), q)))  # Shamir's trick: u1 G + u2 Q in one pass
    acc = None
    for i in range(255, -1, -1):
        acc = _dbl(acc)
        k = ((u1 >> i) & 1) | (((u2 >> i) & 1) << 1)
        if k:
            acc = _add(acc, table[k])
    if acc is None:
        return False
    zz = acc[2] * acc[2] % P  # x(acc) mod n == r, without an inverse: X == r Z^2 or (r + n) Z^2 (mod p)
    return (acc[0] - r * zz) % P == 0 or (r + N < P and (acc[0] - (r + N) * zz) % P == 0)
