"""Mosquitto password-file hashes, written without calling mosquitto_passwd.

Mosquitto 2.0 accepts `user:$7$<iterations>$<base64 salt>$<base64 hash>` with
PBKDF2-HMAC-SHA512. Hashing in Python keeps secrets off command lines (where
`ps` would show them) and lets us verify a node's stored secret during
re-provisioning. The iteration count stays modest on purpose: the broker runs
the KDF on every connect, and our secrets are 192-bit random, so extra
iterations buy no security, only reconnect storms that cost CPU.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from kerbside.core.errors import ProvisioningError

ITERATIONS = 1000
SALT_BYTES = 12
HASH_BYTES = 64


class PasswdError(ProvisioningError, ValueError):
    pass


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """True if `password` matches a `$7$` hash (ours or mosquitto_passwd's)."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        raise PasswdError("not a mosquitto $7$ (PBKDF2-SHA512) hash")
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError as e:
        raise PasswdError(f"malformed $7$ hash: {e}") from e
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def passwd_line(user: str, encoded: str) -> str:
    if not user or ":" in user or "\n" in user:
        raise PasswdError(f"{user!r} cannot be a mosquitto user name")
    return f"{user}:{encoded}\n"
