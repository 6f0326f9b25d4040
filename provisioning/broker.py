"""Mosquitto configuration: the one renderer, with the production durability and security settings in one place.

The registry is the single source of truth for which nodes may connect: the
nodes' password file and ACL are derived from it and never edited by hand, so
decommissioning or rotating a node is "change the registry, re-render, SIGHUP
mosquitto". Mosquitto 2.0 re-reads password and ACL files (and the TLS
certificate) on SIGHUP without dropping sessions or queued messages.

Two listeners, each with its own accounts (per_listener_settings):

- the nodes' TLS listener knows only the nodes: a node's user name is its
  device id and the ACL confines it to its own topics;
- the internal listener (loopback, or an internal address with TLS) knows only
  the collectors' ingest accounts, which read readings, status and acks, and
  the operator account, which may send commands. A collector's credential on
  the public listener is refused, and a node's on the internal one.

On both, `use_username_as_clientid` makes the client id the user name, so no
client can take over another's session: a node that connects with another
node's id, or with a collector's, gets its own session and nobody else's.

How durable the broker is (persistence, queue and in-flight limits) and how
big a message may be is said once, in render_base(), and follows the
collector's settings and the wire contract. The development stack
(kerbside.devstack) uses the same base and adds only what is dev-specific;
tests/provisioning/test_prov_broker_durability.py checks that they are what the
collector's batching assumes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kerbside.core import contract
from kerbside.core.errors import ConfigError
from kerbside.core.registry import Device
from kerbside.core.settings import BrokerConfig, MqttConfig
from kerbside.provisioning.passwd import passwd_line

INGEST_USER = "kerbside-collector"
"""The default collector's account: the collector's default client id, so its persistent session keeps its name."""
OPERATOR_USER = "kerbside-operator"
TLS_PORT = 8883
PLAIN_PORT = 1883
LOOPBACK = ("127.0.0.1", "::1", "localhost")
MIN_QUEUE = 100_000
OUTAGE_HOURS = 72
"""How long the collector may be down (a long weekend) before the broker starts dropping its messages."""

AUTOSAVE_S = 10
"""Seconds between saves of the in-memory database: what a broker crash can lose (see render_base)."""

BYTES_PER_QUEUED = 256
"""Payload bytes a queued message may take on average. The largest status message is under 200 bytes and a
one-reading readings message under 64 (tests/security/test_sec_broker_limits.py measures both), so the collector's
backlog of max_queued_messages legitimate messages always fits, while a node sending big messages fills this
budget long before the message count: it bounds the broker's memory."""

PACKET_OVERHEAD = 64
"""Bytes of an MQTT PUBLISH that are not payload: fixed header, topic kerbside/v1/<id>/<kind>, packet id."""
MAX_PACKET = max(contract.MAX_PAYLOAD + PACKET_OVERHEAD, contract.MAX_TO_NODE + 5)
"""max_packet_size: the largest packet anyone has a reason to send. A node's message is at most MAX_PAYLOAD
(8 KiB) and a command at most what a node accepts (16 KiB: OTA chunks); mosquitto 2.0 has one limit for all
clients, so it is the larger of the two. Anything bigger is refused before it is read: the client is
disconnected and nothing is stored or relayed."""

RELOAD_HINT = ("reload mosquitto so it re-reads the password files, ACLs and certificate: on the broker host "
               "`kerbside broker-config --apply` (checks, reloads, confirms), or `systemctl reload mosquitto` "
               "(`kill -HUP <pid>`)")


class AccountError(ConfigError):
    """An ingest or operator account name mosquitto or kerbside cannot use."""


@dataclass(frozen=True)
class Accounts:
    """The internal listener's accounts: one per collector (ingest), and the operator."""

    ingest: tuple[str, ...] = (INGEST_USER,)
    operator: str = OPERATOR_USER

    @classmethod
    def from_settings(cls, b: BrokerConfig) -> Accounts:
        return cls(tuple(b.ingest_users), b.operator_user).check()

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.ingest, self.operator)

    def check(self) -> Accounts:
        if not self.ingest:
            raise AccountError("broker.ingest_users is empty: the collector needs an account")
        for name in self.all:
            if not name or any(ch in name for ch in ":#+/ \t\n") or name.startswith("$"):
                raise AccountError(f"{name!r} cannot be a broker account name (no spaces, ':', '/', '#', '+' or "
                                   "leading '$')")
            if contract.DEVICE_RE.match(name):
                raise AccountError(f"{name!r} looks like a device id: node accounts are 8 hex digits, pick another "
                                   "name so no node can ever hold it")
        if len(set(self.all)) != len(self.all):
            raise AccountError(f"broker account names must differ: {', '.join(self.all)}")
        return self


def queue_limit(devices: int, period_s: int = 60, status_every_s: int = 300, outage_hours: int = OUTAGE_HOURS) -> int:
    """max_queued_messages for the collector's persistent session.

    The collector is the one subscriber that matters: while it is down, every
    node's readings and status messages queue in its session. Mosquitto's
    default of 1000 would drop data after about 15 minutes for a fleet of 60.
    Sized with headroom for twice the fleet, never below MIN_QUEUE.
    """
    per_hour = 3600 / period_s + 3600 / status_every_s
    need = math.ceil(2 * max(devices, 1) * per_hour * outage_hours)
    return max(MIN_QUEUE, need)


def queue_bytes(max_queued: int) -> int:
    """max_queued_bytes: the backlog of max_queued legitimate messages, and no more (see BYTES_PER_QUEUED)."""
    return max_queued * BYTES_PER_QUEUED


@dataclass(frozen=True)
class BrokerFiles:
    """Where mosquitto finds its secrets; absolute paths, rendered into the config."""

    password_file: Path
    acl_file: Path
    cafile: Path
    certfile: Path
    keyfile: Path
    internal_password_file: Path
    internal_acl_file: Path

    def read_by_mosquitto(self) -> tuple[Path, ...]:
        """Every file mosquitto opens, at start and again at each reload, as its own user."""
        return (self.password_file, self.acl_file, self.internal_password_file, self.internal_acl_file, self.cafile,
                self.certfile, self.keyfile)


def render_passwd(devices: Iterable[Device]) -> str:
    """The nodes' listener: one line per active node; decommissioned nodes simply have no line."""
    return "".join(passwd_line(d.id, d.password_hash) for d in sorted(devices, key=lambda d: d.id)
                   if d.active and d.password_hash)


def render_internal_passwd(hashes: Mapping[str, str]) -> str:
    """The internal listener: the ingest and operator accounts, in the order given."""
    return "".join(passwd_line(user, h) for user, h in hashes.items())


def render_acl() -> str:
    return """\
# kerbside ACL for the nodes' listener, rendered by `kerbside broker-config`. Do not edit: re-render.
# A node's user name is its 8-hex device id; %u stands for it. A node may publish only
# its own readings, status and acks and read only its own commands.
pattern write kerbside/v1/%u/readings
pattern write kerbside/v1/%u/status
pattern write kerbside/v1/%u/ack
pattern read kerbside/v1/%u/cmd
"""


def render_internal_acl(accounts: Accounts) -> str:
    ingest = "".join(f"""
user {name}
topic read kerbside/v1/+/readings
topic read kerbside/v1/+/status
topic read kerbside/v1/+/ack
topic read $SYS/broker/log/N
""" for name in accounts.ingest)
    return f"""\
# kerbside ACL for the internal listener, rendered by `kerbside broker-config`. Do not edit: re-render.
# Collectors (one ingest account each) read what nodes send and nothing else: they cannot command a node.
{ingest}
# The operator sends commands and reads what nodes answer.
user {accounts.operator}
topic write kerbside/v1/+/cmd
topic read kerbside/v1/+/ack
topic read kerbside/v1/+/status
"""


def render_base(state_dir: Path, max_queued: int, mqtt: MqttConfig, log_dest: str = "syslog") -> str:
    """Durability, limits and logging: the same for production and the development stack.

    `mqtt` is the collector's [mqtt] section: the broker must let it have receive_maximum messages in flight
    (else its batches of up to batch.max_messages never fill) and keep its session as long as it asks.
    """
    expiry_h = math.ceil(mqtt.session_expiry_s / 3600)
    return f"""\
# Each listener has its own password file and ACL: nodes on one, collectors and the operator on the other.
per_listener_settings true

# Never silently lose data: keep sessions and queued messages across restarts.
persistence true
persistence_location {state_dir}/
# A clean stop saves everything. A crash or power cut loses the queued messages that arrived since the
# last save (already acknowledged to the nodes): at most {AUTOSAVE_S} s. Each save rewrites the whole database;
# the collector acks within about a second while InfluxDB or its spool is healthy, so little is exposed.
autosave_interval {AUTOSAVE_S}
autosave_on_changes false
# The collector's persistent session (mqtt.session_expiry_s) keeps queueing while it is away.
persistent_client_expiration {expiry_h}h
# The default 1000 would drop the collector's backlog within minutes of it going down; broker-config
# sizes it for the fleet: 2 x devices x messages per hour x {OUTAGE_HOURS} h.
max_queued_messages {max_queued}
# ... and {BYTES_PER_QUEUED} bytes a message on average, several times what nodes send: a node sending big
# messages fills this, not the broker's memory.
max_queued_bytes {queue_bytes(max_queued)}
# Unacknowledged QoS1 messages in flight per client: the collector acks in batches, after InfluxDB or an
# fsync, so it needs as many as it asks for (mqtt.receive_maximum).
max_inflight_messages {mqtt.receive_maximum}
max_inflight_bytes 0
# The largest packet anyone has a reason to send: a node's message is at most {contract.MAX_PAYLOAD} bytes, a command
# (OTA chunk) at most {contract.MAX_TO_NODE}. A bigger one disconnects its sender unread. Not message_size_limit: that
# one acknowledges an oversize QoS1 message to an MQTT 3.1.1 client and then drops it, silently.
max_packet_size {MAX_PACKET}

log_dest {log_dest}
# ... and on $SYS/broker/log/<level>, where the collector counts what the broker refuses (oversize packets).
log_dest topic
log_type error
log_type warning
log_type notice
connection_messages true
"""


def listener(port: int, bind: str, password_file: Path, acl_file: Path) -> str:
    return f"""\
listener {port} {bind}
# The client id is the user name: nobody can take over another client's session.
use_username_as_clientid true
allow_anonymous false
password_file {password_file}
acl_file {acl_file}
"""


def _tls(files: BrokerFiles) -> str:
    return f"""\
cafile {files.cafile}
certfile {files.certfile}
keyfile {files.keyfile}
tls_version tlsv1.2
"""


def render_listeners(files: BrokerFiles, tls_port: int = TLS_PORT, tls_bind: str = "0.0.0.0", plain_port: int = PLAIN_PORT,
                     internal_bind: str = "127.0.0.1") -> str:
    internal_tls = "" if internal_bind in LOOPBACK else _tls(files)
    where = "on this host" if not internal_tls else f"on {internal_bind}, TLS (the certificate must name it)"
    return f"""\
# Collectors (ingest accounts) and the operator, {where}. Nodes are not known here.
{listener(plain_port, internal_bind, files.internal_password_file, files.internal_acl_file)}{internal_tls}
# Nodes, TLS only, with their device id and secret. Collectors and the operator are not known here.
{listener(tls_port, tls_bind, files.password_file, files.acl_file)}{_tls(files)}"""


def render_conf(files: BrokerFiles, state_dir: Path, max_queued: int, tls_port: int = TLS_PORT,
                plain_port: int = PLAIN_PORT, tls_bind: str = "0.0.0.0", mqtt: MqttConfig | None = None,
                internal_bind: str = "127.0.0.1", pid_file: Path = Path("/run/mosquitto/mosquitto.pid"),
                system_user: str = "mosquitto", log_dest: str = "syslog") -> str:
    """The production mosquitto.conf: durable broker, internal listener for collectors, TLS for nodes."""
    return f"""\
# kerbside Mosquitto configuration, rendered from the device registry by `kerbside broker-config`.
# After any registry change (provision, decommission, rotate) re-run broker-config, then
# {RELOAD_HINT}.
{render_base(state_dir, max_queued, mqtt or MqttConfig(), log_dest)}
# `kerbside broker-config --apply` reloads the process whose pid is here.
pid_file {pid_file}
# Started as root, mosquitto switches to this user before it reads the files below: they must be readable by it.
user {system_user}

{render_listeners(files, tls_port, tls_bind, plain_port, internal_bind)}"""
