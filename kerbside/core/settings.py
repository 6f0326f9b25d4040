"""kerbside's settings: one model for every command, read one way.

Every setting is a key of a section (`influx.url`, `node.period`), and every
command that has settings reads them here, from four sources, later wins:

    default  <  settings file  <  environment KERBSIDE_<SECTION>_<KEY>  <  flag

The file is TOML. It is the one given with `--config` (or `-c`), else
$KERBSIDE_CONFIG (set but empty: no file), else the first of SEARCH_PATH that
exists. Relative paths in a file are relative to the file, so a depot laptop
can keep `ca = "ca.pem"` next to it; in the environment and on the command
line they are relative to the working directory, as a shell user expects.

One dataclass per section keeps each default, type and key name in one place;
docs/configuration.md documents every key and tests/test_settings.py fails when
the two disagree. Types come from the annotations, so the environment's
strings convert without a schema language (`KERBSIDE_BATCH_LINES=2000`).

Mistakes are loud: an unknown key in a file, a KERBSIDE_* variable of a known
section or close to a real name (naming it), and a retired name are errors; any
other KERBSIDE_* variable is a warning. A silently ignored `KERBSIDE_REGISTRY`
once made a collector set up from the docs accept every device.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import stat
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerbside.core.errors import ConfigError

__all__ = [
    "ENV_CONFIG", "SEARCH_PATH", "AmqpConfig", "AnalysisConfig", "BatchConfig", "BrokerConfig", "CollectorConfig", "Config",
    "ConfigError", "DlqConfig",
    "FirmwareConfig", "HttpConfig", "InfluxConfig", "LogConfig", "MqttConfig", "NodeConfig", "RegistryConfig",
    "SpoolConfig", "StateConfig", "child_env", "env_name", "is_loopback", "load",
]

PREFIX = "KERBSIDE_"
ENV_CONFIG = "KERBSIDE_CONFIG"
NOT_SETTINGS = {
    ENV_CONFIG: "the settings file",
    "KERBSIDE_BENCH_DIR": "where bench/fleet.py works",
}
"""KERBSIDE_* variables that are ours but not settings."""
RETIRED = {
    "KERBSIDE_REGISTRY": "KERBSIDE_REGISTRY_PATH",
    "KERBSIDE_PROFILE": "KERBSIDE_CONFIG (the depot profile is the [node] section of the settings file now)",
    "KERBSIDE_WIFI_PSK": "KERBSIDE_NODE_WIFI_PSK",
}
"""Names earlier versions or docs used: an error that names the replacement, never silently ignored."""
MOVED = {
    "mqtt.host": "[node] broker_host", "mqtt.port": "[node] broker_port", "mqtt.tls": "[node] tls",
    "mqtt.ca": "[node] ca", "mqtt.keepalive": "[node] keepalive", "wifi": "[[node.wifi]]",
}
"""Keys of the former depot profile file, which is the [node] section of the settings now."""


def _search_path() -> tuple[Path, ...]:
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return (Path("kerbside.toml"), Path(xdg) / "kerbside" / "kerbside.toml", Path("/etc/kerbside/kerbside.toml"))


SEARCH_PATH = _search_path()
"""Where the settings file is looked for when neither --config nor KERBSIDE_CONFIG says: first found wins."""


def _secret(default: str = "") -> Any:
    return field(default=default, metadata={"secret": True})


def _path(default: str = "") -> Any:
    return field(default=default, metadata={"path": True})


@dataclass
class MqttConfig:
    """How the collector (and `dlq replay`) reaches the broker."""

    url: str = "mqtt://127.0.0.1:1883"
    """mqtt://host:port or mqtts://host:port (TLS with the system CAs or ca_file)."""
    client_id: str = "kerbside-collector"
    """Stable on purpose: the broker keeps this session's unacknowledged messages while we are down."""
    username: str = ""
    password: str = _secret()
    ca_file: str = _path()
    group: str = ""
    """Non-empty: subscribe as $share/<group>/... so several collectors split the load."""
    session_expiry_s: int = 30 * 86400
    keepalive_s: int = 30
    receive_maximum: int = 1000
    """QoS1 messages the broker may have in flight to us unacknowledged (MQTT v5); the broker config matches it."""


@dataclass
class CollectorConfig:
    source: str = "mqtt"
    """Where the collector takes messages from: "mqtt" (the [mqtt] broker, Mosquitto) or "amqp" (the [amqp] queue
    of a RabbitMQ cluster, shared by competing collectors; docs/scaling.md)."""


@dataclass
class AmqpConfig:
    """How the collector consumes a RabbitMQ cluster's queue (collector.source = "amqp")."""

    urls: list[str] = field(default_factory=lambda: ["amqp://127.0.0.1:5672"])
    """amqp://host:port (amqps:// for TLS) of every node of the cluster: tried in turn from a random one."""
    username: str = ""
    """This collector's ingest account (broker.ingest_users)."""
    password: str = _secret()
    ca_file: str = _path()
    """CA of the nodes' certificate for amqps:// (empty: the system's)."""
    vhost: str = "/"
    queue: str = "kerbside.ingest"
    """The quorum queue every collector consumes; `broker-config --engine rabbitmq` declares and binds it."""
    prefetch: int = 1000
    """Deliveries the broker may have outstanding to us unacked: as for mqtt.receive_maximum, more than
    batch.max_messages, so that batches fill."""
    heartbeat_s: int = 10
    """A node that vanished without closing the connection (host down, network cut) is noticed after about twice this."""


@dataclass
class InfluxConfig:
    url: str = "http://127.0.0.1:8086"
    db: str = "kerbside"
    rp: str = ""
    """Retention policy for synced data; empty = the database default."""
    unsynced_rp: str = ""
    """Retention policy for readings taken without a synced clock; production uses "unsynced"."""
    username: str = ""
    password: str = _secret()
    api: str = "v1"
    """v1 (/write, InfluxDB 1.x) or v2 (/api/v2/write with token, org, bucket)."""
    token: str = _secret()
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
    dir: str = _path("/var/lib/kerbside/spool")
    max_bytes: int = 1 << 30
    warn_ratio: float = 0.8
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclass
class DlqConfig:
    dir: str = _path()
    """Empty: <spool dir>/../dlq."""
    max_bytes: int = 256 << 20
    """Budget of the dead-letter store; when full the collector stops acknowledging until there is room."""


@dataclass
class StateConfig:
    dir: str = _path()
    """Sequence tracking survives restarts here. Empty: <spool dir>/../state."""
    max_bytes: int = 64 << 20
    """Budget of the sequence state (full file and journal); the journal is compacted at half of it."""


@dataclass
class RegistryConfig:
    path: str = _path()
    """Device registry written by provisioning. Empty: the collector accepts every device; the provisioning
    and export commands use ./kerbside-registry.json."""

    def or_default(self) -> Path:
        """The file the provisioning and export commands use."""
        return Path(self.path or "kerbside-registry.json")


@dataclass
class HttpConfig:
    """The collector's HTTP server: /metrics, /healthz and the fleet page with its JSON API."""

    host: str = "127.0.0.1"
    """Loopback unless password is set: the collector refuses to serve anything else without the credential."""
    port: int = 9108
    """0 disables the HTTP server."""
    user: str = "operator"
    """The operator credential's user name (HTTP basic auth)."""
    password: str = _secret()
    """Set: every page asks for user and password (Prometheus: basic_auth in the scrape config)."""


@dataclass
class LogConfig:
    json: bool = False
    level: str = "INFO"


@dataclass
class BrokerConfig:
    """What `kerbside broker-config` renders, and where provision and registry re-render the password file."""

    engine: str = "mosquitto"
    """"mosquitto" (one broker) or "rabbitmq" (a cluster: docs/scaling.md)."""
    dir: str = _path()
    """broker-config writes here (./broker when empty); provision and registry re-render its passwd when set."""
    hosts: list[str] = field(default_factory=list)
    """Names or IPs nodes dial; they go into the broker's TLS certificate."""
    state_dir: str = _path("/var/lib/mosquitto")
    tls_port: int = 8883
    tls_bind: str = "0.0.0.0"
    """Address of the nodes' TLS listener."""
    plain_port: int = 1883
    """The internal listener, for collectors and the operator (plain MQTT on loopback, TLS elsewhere)."""
    internal_bind: str = "127.0.0.1"
    """Address of the internal listener: loopback when the collector runs on the broker host."""
    ingest_users: list[str] = field(default_factory=lambda: ["kerbside-collector"])
    """One account per collector: its mqtt.username and, on this broker, its client id."""
    operator_user: str = "kerbside-operator"
    """The account that may send commands to nodes."""
    system_user: str = "mosquitto"
    """The user mosquitto runs as: every file it reads must be readable by it."""
    pid_file: str = _path("/run/mosquitto/mosquitto.pid")
    """Where mosquitto writes its pid: `broker-config --apply` reloads that process."""
    log_dest: str = "syslog"
    """Mosquitto's log_dest: syslog, stderr, or "file /var/log/mosquitto/mosquitto.log"."""
    fleet_size: int = 0
    """Nodes to size the queues for; 0: the active nodes in the registry."""
    ca_cert: str = _path()
    ca_key: str = _path()
    server_cert: str = _path()
    server_key: str = _path()
    cluster_nodes: list[str] = field(default_factory=list)
    """RabbitMQ: the cluster's Erlang node names (rabbit@host1, …), one per host, in every node's config."""
    amqp_port: int = 5672
    """RabbitMQ: the collectors' AMQP listener on internal_bind."""


@dataclass
class NodeConfig:
    """What `kerbside provision` writes into every node (the depot profile), and what analysis expects of nodes."""

    broker_host: str = ""
    """Host name nodes dial: one of broker.hosts."""
    broker_port: int = 8883
    brokers: list[str] = field(default_factory=list)
    """Every broker nodes may use (a cluster's nodes), host or host:port (default port broker_port). Each node
    gets them all, starting at its own place in the list so the fleet spreads, and moves to the next one when a
    broker fails. Empty: broker_host alone."""
    tls: bool = True
    ca: str = _path()
    """CA certificate nodes trust (broker-config writes it as ca.pem); goes to the node as /ca.pem."""
    release_key: str = _path()
    """The city's release public key (`kerbside release keygen` writes release.pub); goes to the node as
    /release.pub. A node without it refuses every over-the-air update."""
    keepalive: int = 60
    wifi: list[dict[str, str]] = field(default_factory=list, metadata={"file_only": True})
    """[[node.wifi]] tables with ssid and psk, tried in order."""
    wifi_ssid: str = ""
    """A network tried before the ones in wifi (--wifi-ssid)."""
    wifi_psk: str = _secret()
    """Its key: environment or file only, never a flag (ps would show it)."""
    ntp: list[str] = field(default_factory=list)
    """Time servers nodes ask, in order; empty: the broker's host (run the city's NTP server there). Never a public
    pool by default: the NTP Pool's rules forbid a fleet defaulting to pool.ntp.org without a vendor zone."""
    period: int = 60
    """Seconds per reading; analysis expects 3600/period readings per hour."""
    sample: int = 10
    status_every: int = 300


@dataclass
class FirmwareConfig:
    image: str = _path()
    """MicroPython .bin that `kerbside flash` writes."""


@dataclass
class AnalysisConfig:
    tz: str = "Europe/Brussels"
    """IANA time zone of local days (daily means run local midnight to midnight)."""


@dataclass
class Config:
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    amqp: AmqpConfig = field(default_factory=AmqpConfig)
    influx: InfluxConfig = field(default_factory=InfluxConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    dlq: DlqConfig = field(default_factory=DlqConfig)
    state: StateConfig = field(default_factory=StateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    firmware: FirmwareConfig = field(default_factory=FirmwareConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    file: Path | None = field(default=None, compare=False, repr=False)
    """The settings file read, if any."""
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """"section.key" -> where its value came from, for keys not at their default."""
    warnings: list[str] = field(default_factory=list, compare=False, repr=False)

    @property
    def dlq_dir(self) -> Path:
        return Path(self.dlq.dir) if self.dlq.dir else Path(self.spool.dir).parent / "dlq"

    @property
    def state_dir(self) -> Path:
        return Path(self.state.dir) if self.state.dir else Path(self.spool.dir).parent / "state"

    def as_dict(self, mask: bool = True) -> dict[str, dict[str, Any]]:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        return _masked(out) if mask else out

    def to_toml(self, mask: bool = True, sources: bool = False) -> str:
        """The effective settings as a settings file; with `sources`, where each non-default value came from."""
        lines: list[str] = []
        for section, values in self.as_dict(mask).items():
            tables = {k: v for k, v in values.items() if _is_table_list(v)}
            lines.append(f"[{section}]")
            for key, value in values.items():
                if key in tables:
                    continue
                text = f"{key} = {_toml_value(value)}"
                where = self.sources.get(f"{section}.{key}")
                lines.append(f"{text:<50} # {where}" if sources and where else text)
            for key, items in tables.items():
                for item in items:
                    lines.append(f"[[{section}.{key}]]")
                    lines.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
            lines.append("")
        return "\n".join(lines)

    def to_env(self) -> dict[str, str]:
        """The environment that gives a child process exactly these settings (and no settings file)."""
        env = {ENV_CONFIG: ""}
        for section, key, f in _keys():
            if f.metadata.get("file_only"):
                continue
            env[env_name(section, key)] = _env_value(getattr(getattr(self, section), key))
        return env


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.default_factory))


def env_name(section: str, key: str) -> str:
    return f"{PREFIX}{section.upper()}_{key.upper()}"


def _keys() -> list[tuple[str, str, dataclasses.Field[Any]]]:
    return [(s, f.name, f) for s in SECTIONS for f in dataclasses.fields(_section_type(s))]


def _section_type(section: str) -> type:
    return typing.get_type_hints(Config)[section]  # type: ignore[no-any-return]


def _key_type(section: str, key: str) -> Any:
    return typing.get_type_hints(_section_type(section))[key]


def _masked(out: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for section, values in out.items():
        for f in dataclasses.fields(_section_type(section)):
            value = values[f.name]
            if f.metadata.get("secret") and value:
                values[f.name] = "***"
            elif _is_table_list(value):
                values[f.name] = [{k: "***" if k in ("psk", "password") and v else v for k, v in item.items()}
                                  for item in value]
    return out


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


# --- reading -------------------------------------------------------------------------------------------


def _convert(raw: str, kind: Any, where: str) -> Any:
    """An environment string to the key's type."""
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{where}: expected true/false, got {raw!r}")
    if typing.get_origin(kind) is list:
        return [part.strip() for part in raw.split(",") if part.strip()]
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise ConfigError(f"{where}: expected {_type_name(kind)}, got {raw!r}") from None
    return raw


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        inner = typing.get_args(kind)[0]
        return "a list of [[tables]]" if typing.get_origin(inner) is dict else "a list of strings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


def _check_type(value: Any, kind: Any, where: str) -> Any:
    """A file or flag value (already typed) against the key's type; ints are fine where numbers are expected."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Path) and kind is str:
        return str(value)
    origin = typing.get_origin(kind)
    if origin is list:
        if isinstance(value, (list, tuple)):
            inner = typing.get_args(kind)[0]
            if typing.get_origin(inner) is dict:
                if all(isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in value):
                    return [dict(v) for v in value]
            elif all(isinstance(v, str) for v in value):
                return list(value)
    elif type(value) is kind:
        return value
    raise ConfigError(f"{where}: expected {_type_name(kind)}, got {value!r}")


def _resolve_path(value: str, base: Path | None) -> str:
    if not value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() or base is None else base / p)


def _known_key(section: str, key: str, where: str) -> dataclasses.Field[Any]:
    moved = MOVED.get(f"{section}.{key}") or MOVED.get(section)
    if moved:
        raise ConfigError(f"{where}: the depot profile's {section}{'.' + key if key else ''} is {moved} now "
                          "(docs/configuration.md)")
    if section not in SECTIONS:
        hint = _nearest(section, SECTIONS)
        raise ConfigError(f"{where}: unknown section [{section}]{hint} (known: {', '.join(SECTIONS)})")
    fields = {f.name: f for f in dataclasses.fields(_section_type(section))}
    if key not in fields:
        hint = _nearest(key, fields)
        raise ConfigError(f"{where}: unknown key {key!r} in [{section}]{hint} (docs/configuration.md lists every key)")
    return fields[key]


def _nearest(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _set(cfg: Config, section: str, key: str, value: Any, where: str, base: Path | None = None) -> None:
    f = _known_key(section, key, where)
    kind = _key_type(section, key)
    value = _convert(value, kind, where) if isinstance(value, str) and kind is not str else _check_type(value, kind, where)
    if f.metadata.get("path"):
        value = _resolve_path(value, base)
    setattr(getattr(cfg, section), key, value)
    cfg.sources[f"{section}.{key}"] = where


def find_file(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    """--config, else $KERBSIDE_CONFIG (empty: none), else the first file of SEARCH_PATH that exists."""
    if explicit is not None:
        return Path(explicit)
    if ENV_CONFIG in env:
        return Path(env[ENV_CONFIG]) if env[ENV_CONFIG] else None
    return next((p for p in SEARCH_PATH if p.is_file()), None)


def _read_file(cfg: Config, path: Path) -> None:
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"settings file {path} not found (docs/configuration.md; an example is "
                          "collector/deploy/collector.toml)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    cfg.file = path
    base = path.resolve().parent
    secrets = []
    for section, values in doc.items():
        if not isinstance(values, dict):
            if section in MOVED:
                _known_key(section, "", str(path))
            raise ConfigError(f"{path}: {section!r} must be a [section]; docs/configuration.md lists them")
        for key, value in values.items():
            _set(cfg, section, key, value, f"{path} [{section}] {key}", base)
            f = _known_key(section, key, "")
            if (f.metadata.get("secret") and value) or (key == "wifi" and any(w.get("psk") for w in value)):
                secrets.append(f"{section}.{key}")
    if secrets and path.stat().st_mode & stat.S_IRWXO:
        cfg.warnings.append(f"{path} holds secrets ({', '.join(secrets)}) but every user can read it: chmod 600 {path} "
                            "(or 640 and a group for the service that reads it)")


def _read_env(cfg: Config, env: Mapping[str, str]) -> None:
    keys = {env_name(s, k): (s, k, f) for s, k, f in _keys()}
    suffixes = {name[len(PREFIX):]: name for name in keys}
    for name, raw in sorted(env.items()):
        if not name.startswith(PREFIX) or name in NOT_SETTINGS:
            continue
        if name in RETIRED:
            raise ConfigError(f"environment {name} is not read any more: use {RETIRED[name]} (docs/configuration.md)")
        if name in keys:
            section, key, f = keys[name]
            if f.metadata.get("file_only"):
                raise ConfigError(f"environment {name}: {section}.{key} is a list of [[{section}.{key}]] tables, set in the "
                                  "settings file (docs/configuration.md)")
            _set(cfg, section, key, raw, f"environment {name}")
            continue
        close = difflib.get_close_matches(name[len(PREFIX):], list(suffixes), n=1, cutoff=0.8)
        hint = f" (did you mean {suffixes[close[0]]}?)" if close else ""
        if close or name[len(PREFIX):].lower().partition("_")[0] in SECTIONS:
            raise ConfigError(f"environment {name} is not a setting{hint}; docs/configuration.md lists every one")
        cfg.warnings.append(f"environment {name} is not a kerbside setting and is ignored")


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the settings file, then the environment, then `overrides` ("section.key": value) from flags.

    `path` is the --config flag (None: $KERBSIDE_CONFIG or the search path); an override of None is a flag
    not given.
    """
    env = os.environ if env is None else env
    cfg = Config()
    file = find_file(path, env)
    if file is not None:
        _read_file(cfg, file)
    _read_env(cfg, env)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        _set(cfg, section, key, value, f"flag for {dotted}")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """What no command can work with, whichever it is."""
    if not cfg.mqtt.url.startswith(("mqtt://", "mqtts://")):
        raise ConfigError(f"mqtt.url {cfg.mqtt.url!r} must start with mqtt:// or mqtts://")
    if cfg.collector.source not in ("mqtt", "amqp"):
        raise ConfigError(f"collector.source must be mqtt or amqp, not {cfg.collector.source!r}")
    for url in cfg.amqp.urls:
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigError(f"amqp.urls: {url!r} must start with amqp:// or amqps://")
    if cfg.collector.source == "amqp" and not cfg.amqp.urls:
        raise ConfigError("collector.source = amqp needs amqp.urls: every node of the cluster")
    if cfg.broker.engine not in ("mosquitto", "rabbitmq"):
        raise ConfigError(f"broker.engine must be mosquitto or rabbitmq, not {cfg.broker.engine!r}")
    if not cfg.influx.url.startswith(("http://", "https://")):
        raise ConfigError(f"influx.url {cfg.influx.url!r} must start with http:// or https://")
    if cfg.influx.api not in ("v1", "v2"):
        raise ConfigError(f"influx.api must be v1 or v2, not {cfg.influx.api!r}")
    if cfg.influx.api == "v2" and not cfg.influx.bucket:
        raise ConfigError("influx.api = v2 needs influx.bucket (and usually token and org)")
    if cfg.batch.lines < 1 or cfg.batch.interval_s <= 0 or cfg.batch.max_messages < 1 or cfg.batch.linger_s < 0:
        raise ConfigError("batch.lines and batch.max_messages must be >= 1, batch.interval_s > 0, batch.linger_s >= 0")
    for key, value in (("spool.max_bytes", cfg.spool.max_bytes), ("dlq.max_bytes", cfg.dlq.max_bytes),
                       ("state.max_bytes", cfg.state.max_bytes)):
        if value < 1 << 20:
            raise ConfigError(f"{key} must be at least 1 MiB (1048576), not {value}")
    for w in cfg.node.wifi:
        if set(w) - {"ssid", "psk"}:
            raise ConfigError(f"[[node.wifi]] has ssid and psk, not {', '.join(sorted(set(w) - {'ssid', 'psk'}))}")


def is_loopback(host: str) -> bool:
    """Whether a listen address only takes connections from this machine ("" and 0.0.0.0 take them from anywhere)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve to any address


def child_env(cfg: Config, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) without any KERBSIDE_* variable, plus cfg.to_env().

    For a kerbside process started by another (the demo's collector, a test's): it gets exactly `cfg`,
    whatever settings file or variables the user has.
    """
    base = os.environ if base is None else base
    return {**{k: v for k, v in base.items() if not k.startswith(PREFIX)}, **cfg.to_env()}
