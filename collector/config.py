"""The collector's configuration: TOML file, then KERBSIDE_<SECTION>_<KEY> environment, then flags.

One dataclass per TOML section so that defaults, types and the documented
example (collector/deploy/collector.toml) stay in one place; environment
values are converted to the type of the default, so `KERBSIDE_BATCH_LINES=2000`
works without a schema language.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECRET_KEYS = {"password", "token"}


class ConfigError(ValueError):
    """A config problem the operator fixes in the file or environment; the message says where."""


@dataclass
class MqttConfig:
    url: str = "mqtt://127.0.0.1:1883"
    """mqtt://host:port or mqtts://host:port (TLS with the system CAs or ca_file)."""
    client_id: str = "kerbside-collector"
    """Stable on purpose: the broker keeps this session's unacknowledged messages while we are down."""
    username: str = ""
    password: str = ""
    ca_file: str = ""
    group: str = ""
    """Non-empty: subscribe as $share/<group>/... so several collectors split the load."""
    session_expiry_s: int = 30 * 86400
    keepalive_s: int = 30
    receive_maximum: int = 1000
    """QoS1 messages the broker may have in flight to us unacknowledged (MQTT v5)."""


@dataclass
class InfluxConfig:
    url: str = "http://127.0.0.1:8086"
    db: str = "kerbside"
    rp: str = ""
    """Retention policy for synced data; empty = the database default."""
    unsynced_rp: str = ""
    """Retention policy for readings taken without a synced clock; production uses "unsynced"."""
    username: str = ""
    password: str = ""
    api: str = "v1"
    """v1 (/write, InfluxDB 1.x) or v2 (/api/v2/write with token, org, bucket)."""
    token: str = ""
    org: str = ""
    bucket: str = ""
    gzip: bool = True
    timeout_s: float = 10.0
    create_db: bool = True


@dataclass
class BatchConfig:
    lines: int = 5000
    interval_s: float = 1.0
    max_messages: int = 500
    """Flush after this many unacknowledged messages even if lines/interval are not reached."""
    linger_s: float = 0.005
    """Flush once no message arrived for this long: low latency when quiet, big batches under load."""


@dataclass
class SpoolConfig:
    dir: str = "/var/lib/kerbside/spool"
    max_bytes: int = 1 << 30
    warn_ratio: float = 0.8
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclass
class DlqConfig:
    dir: str = ""
    """Empty: <spool dir>/../dlq."""


@dataclass
class StateConfig:
    dir: str = ""
    """Sequence tracking survives restarts here. Empty: <spool dir>/../state."""


@dataclass
class RegistryConfig:
    path: str = ""
    """Device registry written by provisioning; empty = accept every device."""


@dataclass
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 9108
    """0 disables /metrics and /healthz."""


@dataclass
class LogConfig:
    json: bool = False
    level: str = "INFO"


@dataclass
class Config:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    influx: InfluxConfig = field(default_factory=InfluxConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    dlq: DlqConfig = field(default_factory=DlqConfig)
    state: StateConfig = field(default_factory=StateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def dlq_dir(self) -> Path:
        return Path(self.dlq.dir) if self.dlq.dir else Path(self.spool.dir).parent / "dlq"

    @property
    def state_dir(self) -> Path:
        return Path(self.state.dir) if self.state.dir else Path(self.spool.dir).parent / "state"

    def as_dict(self, mask: bool = True) -> dict[str, dict[str, Any]]:
        out = dataclasses.asdict(self)
        if mask:
            for section in out.values():
                for k in section:
                    if k in SECRET_KEYS and section[k]:
                        section[k] = "***"
        return out


def _convert(raw: str, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{where}: expected true/false, got {raw!r}")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{where}: expected a {type(default).__name__}, got {raw!r}") from None
    return raw


def _apply(cfg: Config, section: str, key: str, value: Any, where: str) -> None:
    sec = getattr(cfg, section, None)
    if sec is None or not dataclasses.is_dataclass(sec):
        raise ConfigError(f"{where}: unknown section [{section}] (known: {', '.join(f.name for f in dataclasses.fields(cfg))})")
    if key not in {f.name for f in dataclasses.fields(sec)}:
        raise ConfigError(f"{where}: unknown key {key!r} in [{section}]")
    default = getattr(sec, key)
    if isinstance(value, str) and not isinstance(default, str):
        value = _convert(value, default, where)
    elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif type(value) is not type(default):
        raise ConfigError(f"{where}: expected a {type(default).__name__}, got {value!r}")
    setattr(sec, key, value)


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> Config:
    """File, then environment, then overrides ("section.key": value) from flags, later wins."""
    cfg = Config()
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file (start from collector/deploy/collector.toml)") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        for section, values in doc.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: {section!r} must be a [section]")
            for key, value in values.items():
                _apply(cfg, section, key, value, f"{path} [{section}] {key}")
    env = os.environ if env is None else env
    sections = {f.name for f in dataclasses.fields(cfg)}
    for name, raw in env.items():
        if not name.startswith("KERBSIDE_"):
            continue
        rest = name[len("KERBSIDE_"):].lower()
        section, _, key = rest.partition("_")
        if section in sections and key:
            _apply(cfg, section, key, raw, f"environment {name}")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        _apply(cfg, section, key, value, f"--{key}")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    if not cfg.mqtt.url.startswith(("mqtt://", "mqtts://")):
        raise ConfigError(f"mqtt.url {cfg.mqtt.url!r} must start with mqtt:// or mqtts://")
    if not cfg.influx.url.startswith(("http://", "https://")):
        raise ConfigError(f"influx.url {cfg.influx.url!r} must start with http:// or https://")
    if cfg.influx.api not in ("v1", "v2"):
        raise ConfigError(f"influx.api must be v1 or v2, not {cfg.influx.api!r}")
    if cfg.influx.api == "v2" and not cfg.influx.bucket:
        raise ConfigError("influx.api = v2 needs influx.bucket (and usually token and org)")
    if cfg.batch.lines < 1 or cfg.batch.interval_s <= 0 or cfg.batch.max_messages < 1 or cfg.batch.linger_s < 0:
        raise ConfigError("batch.lines and batch.max_messages must be >= 1, batch.interval_s > 0, batch.linger_s >= 0")
    if cfg.spool.max_bytes < 1 << 20:
        raise ConfigError("spool.max_bytes must be at least 1 MiB")
