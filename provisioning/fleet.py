"""Registry operations behind `kerbside registry`: decommission and credential rotation.

Both change only the registry; the broker learns of them when broker-config
re-renders its password file (and mosquitto is reloaded), the collector on
its next registry read. A decommissioned id is never reused, so old data can
never be attributed to a new node.
"""

from __future__ import annotations

import datetime as dt

from kerbside.core.errors import ProvisioningError
from kerbside.core.registry import ACTIVE, DECOMMISSIONED, Device, Registry
from kerbside.provisioning.identity import check_device_id, new_secret
from kerbside.provisioning.passwd import clear_secret, set_secret


class FleetError(ProvisioningError, RuntimeError):
    pass


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _get(devices: dict[str, Device], device_id: str) -> Device:
    check_device_id(device_id)
    dev = devices.get(device_id)
    if dev is None:
        raise FleetError(f"device {device_id} is not in the registry (see `kerbside registry list`)")
    return dev


def decommission(registry: Registry, device_id: str, reason: str = "") -> Device:
    """Retire a node: its password hash is wiped so no re-render can let it back in."""
    with registry.edit() as devices:
        dev = _get(devices, device_id)
        dev.status = DECOMMISSIONED
        clear_secret(dev)
        dev.updated = now_iso()
        if reason:
            dev.extra["decommission_reason"] = reason
        return dev


def rotate(registry: Registry, device_id: str) -> tuple[Device, str]:
    """A new secret for a node; the old one stops working at the next broker reload.

    The caller must get the returned secret onto the node (provision does) or
    drop it: the node is then refused until it is re-provisioned, which is
    what you want for a node you suspect was tampered with.
    """
    secret = new_secret()
    with registry.edit() as devices:
        dev = _get(devices, device_id)
        if dev.status != ACTIVE:
            raise FleetError(f"device {device_id} is decommissioned; provision a new node instead of rotating")
        dev.credential += 1
        set_secret(dev, secret)
        dev.updated = now_iso()
        return dev, secret
