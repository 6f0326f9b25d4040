"""Mosquitto configuration: the one renderer, with the production durability settings in one place.

The registry is the single source of truth for who may connect: the password
file and ACL are derived from it and never edited by hand, so decommissioning
or rotating a node is "change the registry, re-render, SIGHUP mosquitto".
Mosquitto 2.0 re-reads password_file and acl_file on SIGHUP without dropping
sessions or queued messages.

How durable the broker is (persistence, queue and in-flight limits) is said
once, in render_base(), and follows the collector's settings: the in-flight
window is the collector's receive_maximum, sessions live as long as it asks.
`kerbside broker-config` renders the production config from it; the
development stack (kerbside.devstack) uses the same base and adds only what is
dev-specific. tests/provisioning/test_prov_broker_durability.py checks that
they are what the collector's batching assumes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kerbside.core.registry import Device
from kerbside.core.settings import MqttConfig
from kerbside.provisioning.passwd import passwd_line

COLLECTOR_USER = "collector"
TLS_PORT = 8883
PLAIN_PORT = 1883
MIN_QUEUE = 100_000
OUTAGE_HOURS = 72
"""How long the collector may be down (a long weekend) before the broker starts dropping its messages."""

AUTOSAVE_S = 10
"""Seconds between saves of the in-memory database: what a broker crash can lose (see render_base)."""

RELOAD_HINT = "reload mosquitto so it re-reads the password file and ACL: `systemctl reload mosquitto` or `kill -HUP <pid>`"


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


@dataclass(frozen=True)
class BrokerFiles:
    """Where mosquitto finds its secrets; absolute paths, rendered into the config."""

    password_file: Path
    acl_file: Path
    cafile: Path
    certfile: Path
    keyfile: Path


def render_passwd(devices: Iterable[Device], collector_hash: str, collector_user: str = COLLECTOR_USER) -> str:
    """One line per active node plus the collector; decommissioned nodes simply have no line."""
    lines = [passwd_line(collector_user, collector_hash)]
    for d in sorted(devices, key=lambda d: d.id):
        if d.active and d.password_hash:
            lines.append(passwd_line(d.id, d.password_hash))
    return "".join(lines)


def render_acl(collector_user: str = COLLECTOR_USER) -> str:
    return f"""\
# kerbside ACL, rendered from the device registry by `kerbside broker-config`. Do not edit: re-render.
# A node's user name is its 8-hex device id; %u stands for it. A node may publish only
# its own readings, status and acks and read only its own commands.
pattern write kerbside/v1/%u/readings
pattern write kerbside/v1/%u/status
pattern write kerbside/v1/%u/ack
pattern read kerbside/v1/%u/cmd

# The collector reads every node and sends commands.
user {collector_user}
topic read kerbside/v1/#
topic write kerbside/v1/+/cmd
"""


def render_security(files: BrokerFiles, tls_port: int = TLS_PORT, tls_bind: str = "0.0.0.0") -> str:
    """Authentication, ACL and the TLS listener: the part of the config that keeps nodes apart."""
    return f"""\
# --- kerbside security: rendered by `kerbside broker-config` ---
allow_anonymous false
password_file {files.password_file}
acl_file {files.acl_file}

# Nodes connect here, TLS only, with their device id and secret.
listener {tls_port} {tls_bind}
cafile {files.cafile}
certfile {files.certfile}
keyfile {files.keyfile}
tls_version tlsv1.2
"""


def render_base(state_dir: Path, max_queued: int, mqtt: MqttConfig, log_dest: str = "syslog") -> str:
    """Durability, limits and logging: the same for production and the development stack.

    `mqtt` is the collector's [mqtt] section: the broker must let it have receive_maximum messages in flight
    (else its batches of up to batch.max_messages never fill) and keep its session as long as it asks.
    """
    expiry_h = math.ceil(mqtt.session_expiry_s / 3600)
    return f"""\
per_listener_settings false

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
max_queued_bytes 0
# Unacknowledged QoS1 messages in flight per client: the collector acks in batches, after InfluxDB or an
# fsync, so it needs as many as it asks for (mqtt.receive_maximum).
max_inflight_messages {mqtt.receive_maximum}
max_inflight_bytes 0

log_dest {log_dest}
log_type error
log_type warning
log_type notice
connection_messages true
"""


def render_conf(files: BrokerFiles, state_dir: Path, max_queued: int, tls_port: int = TLS_PORT,
                plain_port: int = PLAIN_PORT, tls_bind: str = "0.0.0.0", mqtt: MqttConfig | None = None) -> str:
    """The production mosquitto.conf: durable broker, loopback listener for the collector, TLS for nodes."""
    return f"""\
# kerbside Mosquitto configuration, rendered from the device registry by `kerbside broker-config`.
# After any registry change (provision, decommission, rotate) re-run broker-config, then
# {RELOAD_HINT}.
{render_base(state_dir, max_queued, mqtt or MqttConfig())}
# The collector runs on this host: plain MQTT on loopback only.
listener {plain_port} 127.0.0.1

{render_security(files, tls_port, tls_bind)}"""
