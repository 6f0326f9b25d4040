"""Device identities and secrets: what makes one node distinguishable from another.

Ids are random rather than sequential so that a topic name tells an outsider
nothing about fleet size or provisioning order; secrets are random and long
so that no two nodes share one (the airrohr lesson) and brute force is moot.
"""

from __future__ import annotations

import secrets
from collections.abc import Container

from kerbside.core.contract import DEVICE_RE
from kerbside.core.errors import ProvisioningError

SECRET_BYTES = 24
"""192 bits: out of reach of offline guessing even with a cheap password hash."""


class IdentityError(ProvisioningError, RuntimeError):
    pass


def new_device_id(taken: Container[str], attempts: int = 64) -> str:
    """8 lowercase hex digits not in `taken` (ids of decommissioned nodes stay taken forever)."""
    for _ in range(attempts):
        candidate = secrets.token_hex(4)
        if candidate not in taken:
            return candidate
    raise IdentityError(f"no free device id after {attempts} attempts: is the registry corrupt?")


def new_secret() -> str:
    """A URL-safe random string: safe in JSON, in a password file and when typed from a label."""
    return secrets.token_urlsafe(SECRET_BYTES)


def check_device_id(device_id: str) -> str:
    if not DEVICE_RE.match(device_id):
        raise IdentityError(f"{device_id!r} is not a device id (8 lowercase hex digits, e.g. 00c0ffee)")
    return device_id
