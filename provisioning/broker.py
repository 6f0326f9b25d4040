"""Mosquitto configuration rendered from the device registry.

The registry is the single source of truth: the password file and ACL are
derived from it and never edited by hand, so decommissioning or rotating a
node is "change the registry, re-render, SIGHUP mosquitto". Mosquitto 2.0
re-reads password_file and acl_file on SIGHUP without dropping sessions or
queued messages.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kerbside.core.registry import Device
from kerbside.provisioning.passwd import passwd_line

COLLECTOR_USER = "collector"
TLS_PORT = 8883
PLAIN_PORT = 1883
MIN_QUEUE = 100_000
OUTAGE_HOURS = 72
"""How long the collector may be down (a long weekend) before the broker starts dropping its messages."""

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


def render_conf(files: BrokerFiles, state_dir: Path, max_queued: int, tls_port: int = TLS_PORT,
                plain_port: int = PLAIN_PORT, tls_bind: str = "0.0.0.0") -> str:
    """A complete mosquitto.conf: durable broker, loopback listener for the collector, TLS for nodes."""
    return f"""\
# kerbside Mosquitto configuration, rendered from the device registry by `kerbside broker-config`.
# After any registry change (provision, decommission, rotate) re-run broker-config, then
# {RELOAD_HINT}.
per_listener_settings false

# Never silently lose data: keep sessions and queued messages across restarts.
persistence true
persistence_location {state_dir}/
autosave_interval 60
persistent_client_expiration 30d
# Default 1000 would drop the collector's backlog within minutes of it going down.
# Sized for the fleet by kerbside: 2 x devices x messages per hour x {OUTAGE_HOURS} h.
max_queued_messages {max_queued}
max_queued_bytes 0
max_inflight_messages 100

log_dest syslog
log_type error
log_type warning
log_type notice
connection_messages true

# The collector runs on this host: plain MQTT on loopback only.
listener {plain_port} 127.0.0.1

{render_security(files, tls_port, tls_bind)}"""
