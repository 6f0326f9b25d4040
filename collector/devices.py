"""Registry lookups for the collector: admit or reject a device and give its tags, reloading when the file changes.

Provisioning replaces the registry file by atomic rename, so a changed mtime
(checked at most once a second, not per message) means a complete new file.
A registry that fails to parse keeps the last good copy: a typo by an
operator must not turn every reading into a dead letter.
"""

from __future__ import annotations

import logging
import os
import time

from kerbside.collector.decode import Rejected
from kerbside.core.registry import Device, Registry, RegistryError

log = logging.getLogger("kerbside.collector.devices")


class DeviceTags:
    def __init__(self, path: str | os.PathLike[str] | None, check_every_s: float = 1.0) -> None:
        self.registry = Registry(path) if path else None
        self.check_every_s = check_every_s
        self._devices: dict[str, Device] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        if self.registry is None:
            log.warning("registry.path is not set: every device is accepted and tagged only with its id "
                        "(set registry.path or KERBSIDE_REGISTRY_PATH to the file provisioning writes)")
        else:
            if not self.registry.path.exists():
                log.warning("registry %s does not exist: every device is rejected as unknown_device until provisioning "
                            "writes it (dead letters can be replayed). Unset registry.path to accept all devices.",
                            self.registry.path)
            self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        assert self.registry is not None
        now = time.monotonic()
        if not force and now - self._checked < self.check_every_s:
            return
        self._checked = now
        try:
            mtime = self.registry.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime and not force:
            return
        try:
            self._devices = self.registry.load()
            self._mtime = mtime
            log.info("registry %s: %d devices", self.registry.path, len(self._devices))
        except RegistryError as e:
            if force:
                raise
            log.error("registry reload failed, keeping the previous %d devices: %s", len(self._devices), e)
            self._mtime = mtime

    def known(self) -> dict[str, Device] | None:
        """Every device in the registry (reloaded if the file changed); None without a registry."""
        if self.registry is None:
            return None
        self._reload()
        return dict(self._devices)

    def tags_for(self, device: str) -> dict[str, str] | None:
        """Tags to add to the device's points; raises Rejected for unknown or decommissioned devices."""
        if self.registry is None:
            return None
        self._reload()
        dev = self._devices.get(device)
        if dev is None:
            raise Rejected("unknown_device", f"{device} is not in {self.registry.path}")
        if not dev.active:
            raise Rejected("decommissioned", f"{device} is {dev.status}")
        return dev.tags()
