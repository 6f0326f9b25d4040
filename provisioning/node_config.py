"""The node's /config.json and the depot profile it is built from.

The depot profile holds what is the same for every node a depot provisions
(Wi-Fi networks, broker address, CA, timing) so a technician types only what
differs per node: kit and site. It holds Wi-Fi keys, so it should be 0600;
the node secret never goes into it.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerbside.core.contract import KITS

CONFIG_PATH = "/config.json"
CA_PATH = "/ca.pem"
ENV_PROFILE = "KERBSIDE_PROFILE"
ENV_WIFI_PSK = "KERBSIDE_WIFI_PSK"
FORMAT_VERSION = 1


class ConfigError(ValueError):
    pass


@dataclass
class Profile:
    """Settings shared by every node of a depot; see docs/provisioning.md for the file format."""

    wifi: list[dict[str, str]] = field(default_factory=list)
    host: str = ""
    port: int = 8883
    tls: bool = True
    ca: Path | None = None
    keepalive: int = 60
    ntp: list[str] = field(default_factory=lambda: ["pool.ntp.org"])
    period: int = 60
    sample: int = 10
    status_every: int = 300
    warnings: list[str] = field(default_factory=list)

    def check(self) -> Profile:
        if not self.host:
            raise ConfigError("no broker host: set [mqtt] host in the depot profile or pass --broker-host")
        if not self.wifi:
            raise ConfigError("no Wi-Fi network: add a [[wifi]] entry to the depot profile or pass --wifi-ssid "
                              f"(with the key in ${ENV_WIFI_PSK})")
        for w in self.wifi:
            if not w.get("ssid"):
                raise ConfigError("every [[wifi]] entry needs an ssid")
            if len(w.get("psk", "")) not in range(8, 64) and w.get("psk", "") != "":
                raise ConfigError(f"Wi-Fi key for {w['ssid']!r} must be 8..63 characters (WPA2) or empty (open network)")
        if self.tls and self.ca is None:
            raise ConfigError("TLS needs the broker's CA certificate: set [mqtt] ca in the profile or pass --ca "
                              "(broker-config writes it as ca.pem)")
        if self.ca is not None and not self.ca.is_file():
            raise ConfigError(f"CA certificate {self.ca} not found")
        if not 1 <= self.sample <= self.period:
            raise ConfigError(f"sample interval {self.sample} s must be between 1 s and the period {self.period} s")
        return self


def load_profile(path: Path | None) -> Profile:
    """Read a depot profile (TOML); no path and no $KERBSIDE_PROFILE means an empty profile."""
    path = path or (Path(os.environ[ENV_PROFILE]) if os.environ.get(ENV_PROFILE) else None)
    if path is None:
        return Profile()
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"depot profile {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"depot profile {path} is not valid TOML: {e}") from e
    p = Profile()
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        p.warnings.append(f"{path} holds Wi-Fi keys but others can read it: chmod 600 {path}")
    wifi = doc.get("wifi", [])
    if not isinstance(wifi, list) or not all(isinstance(w, dict) for w in wifi):
        raise ConfigError(f"{path}: wifi must be a list of [[wifi]] tables with ssid and psk")
    p.wifi = [{"ssid": str(w.get("ssid", "")), "psk": str(w.get("psk", ""))} for w in wifi]
    mqtt = doc.get("mqtt", {})
    node = doc.get("node", {})
    try:
        p.host = str(mqtt.get("host", ""))
        p.port = int(mqtt.get("port", p.port))
        p.tls = bool(mqtt.get("tls", p.tls))
        p.keepalive = int(mqtt.get("keepalive", p.keepalive))
        if mqtt.get("ca"):
            ca = Path(mqtt["ca"]).expanduser()
            p.ca = ca if ca.is_absolute() else path.parent / ca
        p.ntp = [str(s) for s in node.get("ntp", p.ntp)]
        p.period = int(node.get("period", p.period))
        p.sample = int(node.get("sample", p.sample))
        p.status_every = int(node.get("status_every", p.status_every))
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{path}: {e}") from e
    return p


@dataclass(frozen=True)
class NodeSpec:
    """What differs per node."""

    kit: str
    site: str
    zone: str = ""
    lat: float | None = None
    lon: float | None = None

    def check(self) -> NodeSpec:
        if self.kit not in KITS:
            raise ConfigError(f"kit must be one of {', '.join(KITS)}, not {self.kit!r}")
        if not self.site.strip():
            raise ConfigError("site must not be empty: it is how analysts find this node's data")
        if (self.lat is None) != (self.lon is None):
            raise ConfigError("give both --lat and --lon, or neither")
        if self.lat is not None and not -90 <= self.lat <= 90:
            raise ConfigError(f"latitude {self.lat} is not within -90..90")
        if self.lon is not None and not -180 <= self.lon <= 180:
            raise ConfigError(f"longitude {self.lon} is not within -180..180")
        return self


def build(device_id: str, password: str, credential: int, spec: NodeSpec, profile: Profile, cfg: int,
          cal: dict[str, Any] | None = None) -> dict[str, Any]:
    """Exactly the keys the firmware's config reader expects (docs/provisioning.md)."""
    return {
        "v": FORMAT_VERSION,
        "device": device_id,
        "kit": spec.kit,
        "site": spec.site,
        "zone": spec.zone,
        "wifi": [dict(w) for w in profile.wifi],
        "mqtt": {
            "host": profile.host,
            "port": profile.port,
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
