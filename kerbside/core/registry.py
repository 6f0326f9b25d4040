"""The device registry: one human-readable JSON file shared by provisioning and the collector.

Provisioning writes it (under an exclusive lock, by atomic rename, so a
collector reading it never sees half a file and two technicians provisioning
at once never lose each other's nodes); the collector reads it to reject
unknown or decommissioned devices and to tag points with site and zone.
It holds password hashes, never plain secrets, and is still created 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kerbside.core.errors import ConfigError
from kerbside.core.files import atomic_write

FORMAT = "kerbside-registry/1"
ACTIVE = "active"
DECOMMISSIONED = "decommissioned"


class RegistryError(ConfigError):
    """The registry file cannot be read as one: the operator fixes (or restores) the file."""


@dataclass
class Device:
    id: str
    """8 lowercase hex digits: the MQTT username and the topic level."""
    kit: str
    site: str
    zone: str = ""
    lat: float | None = None
    lon: float | None = None
    status: str = ACTIVE
    created: str = ""
    updated: str = ""
    credential: int = 1
    """Bumped by `registry rotate`; the node's config carries the same number."""
    password_hash: str = ""
    """mosquitto_passwd-compatible hash ($7$...), empty for certificate-only nodes."""
    rabbitmq_hash: str = ""
    """The same secret hashed for a RabbitMQ cluster (salted SHA-256, RabbitMQ's own format); empty for nodes
    provisioned before kerbside could configure one: rotate and re-provision them to move them to a cluster."""
    extra: dict[str, str] = field(default_factory=dict)
    calibrations: list[dict[str, Any]] = field(default_factory=list)
    """Sensor calibrations against a reference station (`kerbside calibrate`; kerbside.analysis.calibration),
    each for one pollutant and a validity period. Kept here so the coefficients travel with the device."""

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    def tags(self) -> dict[str, str]:
        """Low-cardinality tags the collector adds to every point of this device."""
        return {k: v for k, v in (("kit", self.kit), ("site", self.site), ("zone", self.zone)) if v}


class Registry:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Device]:
        """All devices; an absent file is an empty registry."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise RegistryError(f"{self.path}: not valid JSON ({e})") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise RegistryError(f"{self.path}: not a {FORMAT} file")
        try:
            return {k: Device(**v) for k, v in doc.get("devices", {}).items()}
        except TypeError as e:
            raise RegistryError(f"{self.path}: bad device entry ({e})") from e

    def get(self, device_id: str) -> Device | None:
        return self.load().get(device_id)

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Device]]:
        """Load under an exclusive lock, let the caller change the dict, write it back atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            devices = self.load()
            yield devices
            self._write(devices)
        finally:
            os.close(fd)

    def _write(self, devices: dict[str, Device]) -> None:
        doc = {"format": FORMAT, "devices": {k: asdict(devices[k]) for k in sorted(devices)}}
        atomic_write(self.path, json.dumps(doc, indent=2, sort_keys=True) + "\n", 0o600)
