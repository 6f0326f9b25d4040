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
from typing import Any

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


def rabbitmq_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's internal account hash (rabbit_password_hashing_sha256): base64(salt + SHA-256(salt + password)).

    RabbitMQ has no PBKDF2, so a node's account on a cluster needs this second hash, made while the secret is
    known (provision, rotate). One round of SHA-256 is enough for our 192-bit random secrets: nothing to guess.
    """
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def verify_rabbitmq_hash(password: str, encoded: str) -> bool:
    raw = base64.b64decode(encoded)
    return hmac.compare_digest(raw[4:], hashlib.sha256(raw[:4] + password.encode()).digest())


def set_secret(dev: Any, secret: str) -> None:
    """A node's broker credentials from its secret: Mosquitto's hash and RabbitMQ's (docs/scaling.md)."""
    dev.password_hash = hash_password(secret)
    dev.rabbitmq_hash = rabbitmq_hash(secret)


def clear_secret(dev: Any) -> None:
    """No credential left: no re-render of either broker lets the node back in."""
    dev.password_hash = ""
    dev.rabbitmq_hash = ""
