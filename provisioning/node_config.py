"""The node's /config.json and the depot profile it is built from.

The depot profile is what is the same for every node a depot provisions (Wi-Fi
networks, broker address, CA, timing), so a technician types only what differs
per node: kit and site. It is the [node] section of the settings
(kerbside.core.settings.NodeConfig, docs/configuration.md); `Profile` is that
section resolved for one run (networks merged, CA as a path) and checked. It
holds Wi-Fi keys; the node secret never goes into it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kerbside.core.contract import KITS
from kerbside.core.errors import ConfigError
from kerbside.core.registry import Device
from kerbside.core.settings import NodeConfig

CONFIG_PATH = "/config.json"
CA_PATH = "/ca.pem"
FORMAT_VERSION = 1
_DEFAULT = NodeConfig()


@dataclass
class Profile:
    """Settings shared by every node of a depot, ready to write; defaults are the [node] section's."""

    wifi: list[dict[str, str]] = field(default_factory=list)
    host: str = _DEFAULT.broker_host
    port: int = _DEFAULT.broker_port
    brokers: list[tuple[str, int]] = field(default_factory=list)
    """node.brokers, parsed: every broker nodes may use (empty: host and port alone)."""
    tls: bool = _DEFAULT.tls
    ca: Path | None = None
    release_key: Path | None = None
    keepalive: int = _DEFAULT.keepalive
    ntp: list[str] = field(default_factory=lambda: list(_DEFAULT.ntp))
    period: int = _DEFAULT.period
    sample: int = _DEFAULT.sample
    status_every: int = _DEFAULT.status_every

    @classmethod
    def from_settings(cls, node: NodeConfig) -> Profile:
        """The [node] section for one run: --wifi-ssid's network (key from node.wifi_psk) first, then node.wifi."""
        wifi = [dict(w) for w in node.wifi]
        if node.wifi_ssid:
            wifi = [{"ssid": node.wifi_ssid, "psk": node.wifi_psk}] + [w for w in wifi if w.get("ssid") != node.wifi_ssid]
        return cls(wifi=[{"ssid": w.get("ssid", ""), "psk": w.get("psk", "")} for w in wifi], host=node.broker_host,
                   port=node.broker_port, brokers=[_host_port(b, node.broker_port) for b in node.brokers], tls=node.tls,
                   ca=Path(node.ca) if node.ca else None,
                   release_key=Path(node.release_key) if node.release_key else None, keepalive=node.keepalive,
                   ntp=list(node.ntp), period=node.period, sample=node.sample, status_every=node.status_every)

    def check(self) -> Profile:
        if not self.host and not self.brokers:
            raise ConfigError("no broker host: set [node] broker_host in the settings or pass --broker-host")
        if not self.wifi:
            raise ConfigError("no Wi-Fi network: add a [[node.wifi]] entry to the settings or pass --wifi-ssid "
                              "(with the key in $KERBSIDE_NODE_WIFI_PSK)")
        for w in self.wifi:
            if not w.get("ssid"):
                raise ConfigError("every [[node.wifi]] entry needs an ssid")
            if len(w.get("psk", "")) not in range(8, 64) and w.get("psk", "") != "":
                raise ConfigError(f"Wi-Fi key for {w['ssid']!r} must be 8..63 characters (WPA2) or empty (open network)")
        if self.tls and self.ca is None:
            raise ConfigError("TLS needs the broker's CA certificate: set [node] ca in the settings or pass --ca "
                              "(broker-config writes it as ca.pem)")
        if self.ca is not None and not self.ca.is_file():
            raise ConfigError(f"CA certificate {self.ca} not found")
        if self.release_key is not None and not self.release_key.is_file():
            raise ConfigError(f"release public key {self.release_key} not found ([node] release_key)")
        if not 1 <= self.sample <= self.period:
            raise ConfigError(f"sample interval {self.sample} s must be between 1 s and the period {self.period} s")
        return self


@dataclass(frozen=True)
class NodeSpec:
    """What differs per node. None is "not given": a re-provisioned node keeps what the registry says."""

    kit: str | None = None
    site: str | None = None
    zone: str | None = None
    lat: float | None = None
    lon: float | None = None

    def check(self) -> NodeSpec:
        if self.kit is not None and self.kit not in KITS:
            raise ConfigError(f"kit must be one of {', '.join(KITS)}, not {self.kit!r}")
        if self.site is not None and not self.site.strip():
            raise ConfigError("site must not be empty: it is how analysts find this node's data")
        if (self.lat is None) != (self.lon is None):
            raise ConfigError("give both --lat and --lon, or neither")
        if self.lat is not None and not -90 <= self.lat <= 90:
            raise ConfigError(f"latitude {self.lat} is not within -90..90")
        if self.lon is not None and not -180 <= self.lon <= 180:
            raise ConfigError(f"longitude {self.lon} is not within -180..180")
        return self

    def for_new_node(self) -> NodeSpec:
        """A node the registry does not know yet: kit and site are needed, the rest may stay empty."""
        if self.kit is None or self.site is None:
            raise ConfigError("this board is a new node (no identity the registry knows): pass --kit and --site")
        return replace(self, zone=self.zone or "")

    def over(self, dev: Device) -> NodeSpec:
        """This spec on top of what the registry holds for the node: a field not given keeps its value."""
        located = self.lat is not None
        return NodeSpec(kit=self.kit if self.kit is not None else dev.kit, site=self.site if self.site is not None else dev.site,
                        zone=self.zone if self.zone is not None else dev.zone, lat=self.lat if located else dev.lat,
                        lon=self.lon if located else dev.lon)


REGISTRY_FIELDS = ("kit", "site", "zone", "lat", "lon")


def registry_changes(dev: Device, spec: NodeSpec) -> list[str]:
    """What re-provisioning would change in the node's registry entry, for the technician to confirm."""
    return [f"{k}: {getattr(dev, k)!r} -> {getattr(spec, k)!r}" for k in REGISTRY_FIELDS if getattr(dev, k) != getattr(spec, k)]


def config_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What changes in the node's /config.json (never a key: a changed one is only named)."""
    if old is None:
        return []
    out = []
    for key in ("site", "zone", "kit", "ntp", "period", "sample", "status_every"):
        if old.get(key) != new.get(key):
            out.append(f"node {key}: {old.get(key)!r} -> {new.get(key)!r}")
    om, nm = old.get("mqtt") or {}, new["mqtt"]
    for key in ("host", "port", "brokers", "tls", "keepalive"):
        if om.get(key) != nm.get(key):
            out.append(f"node broker {key}: {om.get(key)!r} -> {nm.get(key)!r}")
    ow = [w.get("ssid") for w in old.get("wifi") or [] if isinstance(w, dict)]
    nw = [w["ssid"] for w in new["wifi"]]
    if ow != nw:
        out.append(f"node Wi-Fi networks: {', '.join(map(str, ow)) or 'none'} -> {', '.join(nw)}")
    else:
        keys = {w.get("ssid"): w.get("psk") for w in old.get("wifi") or [] if isinstance(w, dict)}
        out += [f"node Wi-Fi key for {w['ssid']!r} changes" for w in new["wifi"] if keys.get(w["ssid"]) != w["psk"]]
    return out


def _host_port(entry: str, default_port: int) -> tuple[str, int]:
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isdigit():
        return entry, default_port
    if not host or not 0 < int(port) < 65536:
        raise ConfigError(f"node.brokers: {entry!r} is not host or host:port")
    return host, int(port)


def brokers_for(device_id: str, profile: Profile) -> list[tuple[str, int]]:
    """The node's broker list: all of them, starting at the device's own place so that a fleet spreads evenly."""
    brokers = profile.brokers or [(profile.host, profile.port)]
    k = int(device_id, 16) % len(brokers)
    return brokers[k:] + brokers[:k]


def build(device_id: str, password: str, credential: int, spec: NodeSpec, profile: Profile, cfg: int,
          cal: dict[str, Any] | None = None) -> dict[str, Any]:
    """Exactly the keys the firmware's config reader expects (docs/provisioning.md)."""
    brokers = brokers_for(device_id, profile)
    return {
        "v": FORMAT_VERSION,
        "device": device_id,
        "kit": spec.kit,
        "site": spec.site,
        "zone": spec.zone,
        "wifi": [dict(w) for w in profile.wifi],
        "mqtt": {
            "host": brokers[0][0],
            "port": brokers[0][1],
            "brokers": [[h, p] for h, p in brokers],
            "tls": profile.tls,
            "user": device_id,
            "password": password,
            "ca": CA_PATH,
            "keepalive": profile.keepalive,
        },
        "ntp": list(profile.ntp),
        "period": profile.period,
        "sample": profile.sample,
        "status_every": profile.status_every,
        "credential": credential,
        "cfg": cfg,
        "cal": dict(cal or {}),
    }


def encode(config: dict[str, Any]) -> bytes:
    return json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode()


def parse_existing(raw: bytes | None) -> dict[str, Any] | None:
    """A node's current config, or None if it has none we can use (then it gets a new identity)."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("v") == FORMAT_VERSION else None


def next_cfg(old: dict[str, Any] | None, new: dict[str, Any]) -> int:
    """cfg counts config changes, so the collector can tell which config a node runs from its status."""
    if old is None:
        return 1
    prev = old["cfg"] if isinstance(old.get("cfg"), int) else 0
    same = {k: v for k, v in old.items() if k != "cfg"} == {k: v for k, v in new.items() if k != "cfg"}
    return prev if same and prev else prev + 1
