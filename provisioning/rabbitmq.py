"""RabbitMQ cluster configuration: what `kerbside broker-config --engine rabbitmq` renders and applies.

The same account model as for Mosquitto (kerbside.provisioning.broker), in
RabbitMQ's terms. Nodes publish over MQTT; the MQTT plugin routes each message
to the `amq.topic` exchange with routing key kerbside.v1.<id>.<kind>, where a
quorum queue (amqp.queue) bound to readings, status and acks holds it,
replicated on a majority of the cluster, until a collector acks it.

- Each node has its own account, named by its device id. Its topic
  permissions confine it to its own topics (`{username}` and `{client_id}`
  are expanded by RabbitMQ: a node may write kerbside.v1.<its id>.readings,
  status and ack, and only while its client id is its id; it may subscribe
  to its own cmd), and its resource permissions reach nothing but its own
  MQTT session queues. A node connecting with another node's client id may
  make the broker close that node's connection (RabbitMQ 3.10 cannot tie
  client ids to accounts), but it cannot open, delete or read that node's
  session: the broker refuses the connection and the victim's queued
  commands stay (tests/security/test_sec_rabbitmq.py).
- Each collector has an ingest account that may read the queue and nothing
  else: no publish, no command, no configure.
- The operator's account may publish commands and read acks and status, over
  MQTT, and nothing else.

RabbitMQ 3.10 has one set of accounts for every listener (no per-listener
password files), so the separation is by permission, not by port: keep the
operator's secret where operators work. The registry keeps a second hash of
each node's secret in RabbitMQ's format (Device.rabbitmq_hash): RabbitMQ has
no PBKDF2.

`definitions.json` holds the accounts, permissions, the queue and its
bindings; `rabbitmqctl import_definitions` applies it to a running cluster
without a restart (users removed from the registry are deleted explicitly:
an import only adds and updates). `rabbitmq.conf` is every node's config.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerbside.core import contract
from kerbside.core.errors import ConfigError, ProvisioningError
from kerbside.core.registry import Device
from kerbside.core.settings import AmqpConfig, BrokerConfig
from kerbside.provisioning.broker import LOOPBACK, MAX_PACKET, OUTAGE_HOURS, Accounts, queue_bytes, queue_limit
from kerbside.provisioning.broker_dir import BrokerDir, TlsResult, account_password, ensure_tls, tls_paths, write_for_broker
from kerbside.provisioning.passwd import rabbitmq_hash

MAX_MESSAGE = MAX_PACKET
"""max_message_size: the largest message anyone has a reason to send (a node's message, an OTA chunk)."""
CONSUMER_TIMEOUT_MS = OUTAGE_HOURS * 3600 * 1000
"""The collector holds deliveries unacked while a store cannot be written; the 30-minute default would make the
broker close its channel and redeliver everything it holds, over and over, for as long as that lasts."""
EXCHANGE = "amq.topic"
KINDS = ("readings", "status", "ack")
ID = "[0-9a-f]{8}"
PLUGINS = "[rabbitmq_mqtt].\n"

DEV_HEADER = """\
# kerbside DEVELOPMENT RabbitMQ node (tests, demo, benchmarks): NOT FOR PRODUCTION. All nodes on one host,
# loopback listeners. Production clusters are configured by `kerbside broker-config --engine rabbitmq`.
"""


class RabbitError(ProvisioningError):
    """The cluster refused the definitions, or rabbitmqctl could not reach it."""


def session_queues(client_id: str) -> str:
    """The RabbitMQ MQTT plugin's session queues of a client id, as a permission regex."""
    return f"^mqtt-subscription-{re.escape(client_id)}qos[01]$"


def node_permissions(device: str, vhost: str) -> tuple[dict[str, str], dict[str, str]]:
    """A node: its own session queues, and its own topics while its client id is its device id."""
    own = f"mqtt-subscription-{device}qos[01]"
    perms = {"user": device, "vhost": vhost, "configure": f"^{own}$", "write": f"^({own}|amq\\.topic)$",
             "read": f"^({own}|amq\\.topic)$"}
    # The lookahead needs the client id to be the user name too: with another's id, nothing is writable.
    topics = {"user": device, "vhost": vhost, "exchange": EXCHANGE,
              "write": f"^(?=kerbside\\.v1\\.{{client_id}}\\.)kerbside\\.v1\\.{{username}}\\.({'|'.join(KINDS)})$",
              "read": "^kerbside\\.v1\\.{username}\\.cmd$"}
    return perms, topics


def account_permissions(accounts: Accounts, queue: str, vhost: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Ingest accounts read the queue and nothing else; the operator commands (MQTT) and reads acks and status.

    Besides the shared queue an ingest account may make a private server-named queue (`amq.gen-…`: a client
    cannot name a queue so) and bind it to nodes' statuses, and only those: its fleet view's copy of every status
    (collector.amqp_source). It publishes nothing: write on its own queue is what a binding needs."""
    gen = "amq\\.gen-[A-Za-z0-9_-]+"
    perms = [{"user": name, "vhost": vhost, "configure": f"^{gen}$", "write": f"^{gen}$",
              "read": f"^({re.escape(queue)}|{gen}|amq\\.topic)$"} for name in accounts.ingest]
    op = f"mqtt-subscription-{re.escape(accounts.operator)}[^ ]*qos[01]"
    perms.append({"user": accounts.operator, "vhost": vhost, "configure": f"^{op}$", "write": f"^({op}|amq\\.topic)$",
                  "read": f"^({op}|amq\\.topic)$"})
    topics = [{"user": accounts.operator, "vhost": vhost, "exchange": EXCHANGE,
               "write": f"^kerbside\\.v1\\.{ID}\\.cmd$", "read": f"^kerbside\\.v1\\.({ID}|\\*)\\.(ack|status)$"}]
    topics += [{"user": name, "vhost": vhost, "exchange": EXCHANGE, "write": "^$",
                "read": "^kerbside\\.v1\\.\\*\\.status$"} for name in accounts.ingest]
    return perms, topics


def queue_arguments(fleet: int) -> dict[str, Any]:
    """The ingest queue: quorum (replicated), bounded like Mosquitto's queue for the collector (72 h of the fleet)."""
    n = queue_limit(fleet)
    return {"x-queue-type": "quorum", "x-max-length": n, "x-max-length-bytes": queue_bytes(n),
            "x-overflow": "reject-publish", "x-max-in-memory-bytes": 64 << 20}


def render_definitions(devices: Iterable[Device], accounts: Accounts, internal_hashes: Mapping[str, str], queue: str,
                       vhost: str = "/", fleet_size: int = 0) -> dict[str, Any]:
    """definitions.json: every active node with a RabbitMQ hash, the ingest and operator accounts, the queue."""
    nodes = sorted((d for d in devices if d.active and d.rabbitmq_hash), key=lambda d: d.id)
    users = [{"name": d.id, "password_hash": d.rabbitmq_hash, "hashing_algorithm": "rabbit_password_hashing_sha256",
              "tags": []} for d in nodes]
    users += [{"name": name, "password_hash": internal_hashes[name], "hashing_algorithm": "rabbit_password_hashing_sha256",
               "tags": []} for name in accounts.all]
    perms, topics = account_permissions(accounts, queue, vhost)
    for d in nodes:
        p, t = node_permissions(d.id, vhost)
        perms.append(p)
        topics.append(t)
    fleet = fleet_size or len(nodes)
    return {
        "rabbit_version": "3.10.8",
        "users": users,
        "vhosts": [{"name": vhost}],
        "permissions": perms,
        "topic_permissions": topics,
        "queues": [{"name": queue, "vhost": vhost, "durable": True, "auto_delete": False,
                    "arguments": queue_arguments(fleet)}],
        "exchanges": [],
        "bindings": [{"source": EXCHANGE, "vhost": vhost, "destination": queue, "destination_type": "queue",
                      "routing_key": f"kerbside.v1.*.{kind}", "arguments": {}} for kind in KINDS],
        "parameters": [], "global_parameters": [], "policies": [],
    }


def render_node_conf(peers: Sequence[str], *, amqp: str, mqtt: str, mqtt_tls: str = "", tls: Mapping[str, str] | None = None,
                     internal_tls: bool = False, max_message: int = MAX_MESSAGE) -> str:
    """rabbitmq.conf of every node: the cluster, the listeners, and what kerbside needs of the broker.

    amqp and mqtt are the internal listeners (collectors, operator: "ip:port"), TLS with internal_tls (an
    address off this host); mqtt_tls the nodes' listener, with tls = {"cacertfile", "certfile", "keyfile"}.
    The development cluster (kerbside.devcluster) passes no TLS.
    """
    nodes = "".join(f"cluster_formation.classic_config.nodes.{i} = {name}\n" for i, name in enumerate(peers, 1))
    if internal_tls:
        internal = f"""\
# Collectors (AMQP) and the operator (MQTT) on the internal address, TLS with the broker certificate.
listeners.tcp = none
listeners.ssl.default = {amqp}
mqtt.listeners.tcp = none
mqtt.listeners.ssl.internal = {mqtt}
"""
    else:
        internal = f"""\
# Collectors (AMQP) and the operator (MQTT) on this host.
listeners.tcp.default = {amqp}
mqtt.listeners.tcp.default = {mqtt}
"""
    tls_part = ""
    if mqtt_tls and tls:
        tls_part = f"""\
# Nodes: MQTT over TLS with the broker certificate their CA issued (broker.hosts must name every host).
mqtt.listeners.ssl.default = {mqtt_tls}
ssl_options.cacertfile = {tls['cacertfile']}
ssl_options.certfile = {tls['certfile']}
ssl_options.keyfile = {tls['keyfile']}
ssl_options.versions.1 = tlsv1.2
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
"""
    return f"""\
# The cluster: every node lists every node; the first one up forms it, the others join.
cluster_formation.peer_discovery_backend = classic_config
{nodes}# A node cut off from the majority stops serving rather than accept what the majority never sees.
cluster_partition_handling = pause_minority

{internal}{tls_part}
# MQTT sessions (nodes' command subscriptions) are quorum queues: replicated, so a node that fails over to
# another broker finds its session and its queued commands there.
mqtt.durable_queue_type = quorum
# No retained store: RabbitMQ keeps retained messages per broker node, unreplicated, up to its frame limit;
# nothing in kerbside reads them (the collector gets every status from its queue, docs/scaling.md).
mqtt.retained_message_store = rabbit_mqtt_retained_msg_store_noop
# The largest message anyone has a reason to send: a node's message is at most {contract.MAX_PAYLOAD} bytes, a
# command (OTA chunk) at most {contract.MAX_TO_NODE}. A bigger one closes its sender's connection unstored.
max_message_size = {max_message}
# The collector keeps deliveries unacked while its disk cannot take them: give it the whole outage budget.
consumer_timeout = {CONSUMER_TIMEOUT_MS}
"""


@dataclass(frozen=True)
class Applied:
    imported: int
    """Accounts in the definitions."""
    deleted: tuple[str, ...]
    """Accounts on the cluster the registry no longer has (decommissioned nodes, the default guest)."""


Ctl = Callable[..., str]
"""rabbitmqctl ARGS -> stdout (raises RabbitError), on one node of the cluster."""


def apply(ctl: Ctl, definitions_path: str, definitions: Mapping[str, Any], accounts: Accounts) -> Applied:
    """Import the definitions into the running cluster, then delete the accounts they no longer hold.

    An import only adds and updates; a decommissioned node's account must be deleted, or it could still
    connect. Only node-shaped names, kerbside's own accounts and `guest` are ever deleted: other accounts
    on a shared cluster are left alone. Deleting an account closes nothing by itself, so its connections
    are closed too.
    """
    ctl("import_definitions", definitions_path)
    wanted = {u["name"] for u in definitions["users"]}
    existing = [line.split("\t")[0].strip() for line in ctl("list_users", "--no-table-headers").splitlines() if line.strip()]
    stale = tuple(sorted(u for u in existing if u not in wanted
                         and (contract.DEVICE_RE.match(u) or u == "guest" or u in accounts.all)))
    for user in stale:
        ctl("delete_user", user)
        ctl("close_all_user_connections", user, "account deleted by kerbside broker-config")
    return Applied(len(wanted), stale)


def dumps(definitions: Mapping[str, Any]) -> str:
    return json.dumps(definitions, indent=2, sort_keys=True) + "\n"


# --- the broker directory ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    conf: Path
    definitions: Path
    plugins: Path
    tls: TlsResult
    nodes: int
    """Active nodes with a RabbitMQ credential (in the definitions)."""
    without_hash: tuple[str, ...]
    """Active nodes provisioned before kerbside kept a RabbitMQ hash: rotate and re-provision them."""


def system_user(b: BrokerConfig) -> str:
    """The user RabbitMQ runs as: broker.system_user, unless that is left at Mosquitto's default."""
    return "rabbitmq" if b.system_user == "mosquitto" else b.system_user


def write_all(d: BrokerDir, devices: dict[str, Device], b: BrokerConfig, amqp: AmqpConfig) -> Written:
    """Everything the cluster needs, for `broker-config --engine rabbitmq`: every node gets the same files."""
    accounts = Accounts.from_settings(b)
    user = system_user(b)
    if not b.cluster_nodes:
        raise ConfigError("broker.cluster_nodes is empty: name the cluster's nodes (rabbit@host1, rabbit@host2, ...), "
                          "one per host")
    tls = ensure_tls(d, b.hosts, **tls_paths(b), system_user=user)
    hashes = {name: rabbitmq_hash(account_password(d, name)) for name in accounts.all}
    definitions = render_definitions(devices.values(), accounts, hashes, amqp.queue, amqp.vhost, b.fleet_size)
    f = d.files
    conf = render_node_conf(b.cluster_nodes, amqp=f"{b.internal_bind}:{b.amqp_port}", mqtt=f"{b.internal_bind}:{b.plain_port}",
                            mqtt_tls=f"{b.tls_bind}:{b.tls_port}",
                            tls={"cacertfile": str(f.cafile), "certfile": str(f.certfile), "keyfile": str(f.keyfile)},
                            internal_tls=b.internal_bind not in LOOPBACK)
    header = ("# kerbside RabbitMQ node configuration, rendered by `kerbside broker-config --engine rabbitmq`: the same\n"
              "# on every node. Point RABBITMQ_CONFIG_FILE at it (docs/scaling.md); accounts and the queue are in\n"
              "# definitions.json, applied with `broker-config --engine rabbitmq --apply`.\n")
    paths = d.root / "rabbitmq.conf", d.root / "definitions.json", d.root / "enabled_plugins"
    write_for_broker(paths[0], header + conf, secret=False, system_user=user)
    write_for_broker(paths[1], dumps(definitions), secret=True, system_user=user)
    write_for_broker(paths[2], PLUGINS, secret=False, system_user=user)
    active = [dev for dev in devices.values() if dev.active]
    return Written(*paths, tls, sum(1 for dev in active if dev.rabbitmq_hash),
                   tuple(sorted(dev.id for dev in active if not dev.rabbitmq_hash)))


def rabbitmqctl(node: str = "") -> Ctl:
    """The installed rabbitmqctl (on Debian /usr/sbin's, which runs as the rabbitmq user with its cookie)."""
    import shutil
    import subprocess

    binary = shutil.which("rabbitmqctl") or ("/usr/sbin/rabbitmqctl" if Path("/usr/sbin/rabbitmqctl").exists() else None)
    if binary is None:
        raise RabbitError("rabbitmqctl not found: run --apply on a node of the cluster (Debian: apt-get install "
                          "rabbitmq-server)")

    def ctl(*args: str) -> str:
        cmd = [binary, "-q", *(("-n", node) if node else ()), *args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RabbitError(f"rabbitmqctl {args[0]}: {e}") from e
        if p.returncode != 0:
            raise RabbitError(f"rabbitmqctl {' '.join(args[:1])}: exit {p.returncode}: {(p.stderr or p.stdout).strip()[-800:]}")
        return p.stdout
    return ctl
