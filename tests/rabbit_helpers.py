"""A local RabbitMQ cluster secured by `kerbside broker-config --engine rabbitmq --apply`, and clients for it.

The accounts, permissions, queue and bindings are what the command renders from a registry, applied the way an
operator applies them (rabbitmqctl on a cluster host: the dev cluster's shim on PATH). Nodes' secrets are known
to the tests: the registry holds their hashes, as provisioning writes it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions
from typer.testing import CliRunner

from kerbside.cli import app
from kerbside.core.registry import Device, Registry
from kerbside.core.settings import Config, child_env
from kerbside.devcluster import RabbitCluster
from kerbside.provisioning.passwd import set_secret

QUEUE = "kerbside.ingest"
INGEST = ("collector-1", "collector-2", "collector-3")
OPERATOR = "kerbside-operator"


def secret_of(device: str) -> str:
    return f"node-secret-{device}"


@dataclass
class Secured:
    cluster: RabbitCluster
    root: Path
    registry: Path
    devices: tuple[str, ...]
    applied_output: str = ""
    accounts: dict[str, str] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.root / "broker"

    def secret(self, account: str) -> str:
        return self.accounts.get(account) or (self.dir / f"{account}.secret").read_text().strip()

    def settings(self) -> Config:
        cfg = Config()
        cfg.registry.path = str(self.registry)
        b = cfg.broker
        b.engine, b.dir, b.hosts = "rabbitmq", str(self.dir), ["127.0.0.1"]
        b.cluster_nodes = [n.name for n in self.cluster.nodes]
        b.ingest_users, b.operator_user = list(INGEST), OPERATOR
        return cfg

    def apply(self) -> str:
        """`kerbside broker-config --engine rabbitmq --apply`, with the cluster's rabbitmqctl first on PATH."""
        env = child_env(self.settings(), base={})
        env["PATH"] = f"{self.cluster.ctl_shim()}:{os.environ['PATH']}"
        r = CliRunner().invoke(app, ["broker-config", "--apply"], env=env)
        assert r.exit_code == 0, r.output
        self.applied_output = r.output
        return r.output

    def amqp(self, user: str, node: int = 1) -> pika.BlockingConnection:
        params = pika.URLParameters(self.cluster.nodes[node - 1].amqp_url)
        params.credentials = pika.PlainCredentials(user, self.secret(user) if not _is_device(user) else secret_of(user))
        return pika.BlockingConnection(params)

    def purge(self) -> None:
        self.cluster.ctl(self.cluster.any_running(), "purge_queue", QUEUE)

    def collector_settings(self, name: str, influx_url: str, db: str, root: Path) -> dict[str, dict[str, object]]:
        return {"collector": {"source": "amqp"},
                "amqp": {"urls": self.cluster.amqp_urls(), "username": name, "password": self.secret(name)},
                "influx": {"url": influx_url, "db": db}, "spool": {"dir": root / name / "spool"},
                "registry": {"path": self.registry}, "batch": {"interval_s": 0.2}}


def _is_device(user: str) -> bool:
    return len(user) == 8 and all(c in "0123456789abcdef" for c in user)


def secure(cluster: RabbitCluster, root: Path, devices: tuple[str, ...], registry: Path | None = None) -> Secured:
    """A registry of `devices` (each with its secret's hashes), then broker-config --engine rabbitmq --apply.

    `registry`: one already written (a simulated fleet's), whose devices get their secrets here."""
    registry = registry or root / "registry.json"
    with Registry(registry).edit() as reg:
        for d in devices:
            dev = reg.get(d) or Device(id=d, kit="air", site=f"site-{d}", zone="lez")
            set_secret(dev, secret_of(d))
            reg[d] = dev
    s = Secured(cluster, root, registry, devices)
    s.apply()
    return s


TAP = "kerbside.audit"
TAP_USER = "audit"


def add_tap(secured: Secured) -> None:
    """A second quorum queue bound to every readings message, and an account that may read only it: the tests'
    record of what the broker accepted (each publish is confirmed to the node only once both queues hold it)."""
    import json

    from kerbside.provisioning.passwd import rabbitmq_hash

    secured.accounts[TAP_USER] = "audit-secret"
    doc = {"users": [{"name": TAP_USER, "password_hash": rabbitmq_hash("audit-secret"),
                      "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}],
           "permissions": [{"user": TAP_USER, "vhost": "/", "configure": "^$", "write": "^$", "read": f"^{TAP}$"}],
           "queues": [{"name": TAP, "vhost": "/", "durable": True, "auto_delete": False,
                       "arguments": {"x-queue-type": "quorum"}}],
           "bindings": [{"source": "amq.topic", "vhost": "/", "destination": TAP, "destination_type": "queue",
                         "routing_key": "kerbside.v1.*.readings", "arguments": {}}]}
    path = secured.root / "tap.json"
    path.write_text(json.dumps(doc))
    secured.cluster.ctl(secured.cluster.any_running(), "import_definitions", str(path))


class Taken:
    """Everything a consumer took from a queue (acked at once), by a thread of its own."""

    def __init__(self, secured: Secured, user: str, queue: str = QUEUE, node: int = 1) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._conn = secured.amqp(user, node)
        self._thread = threading.Thread(target=self._run, args=(queue,), daemon=True)
        self._thread.start()

    def on_message(self, routing_key: str, body: bytes) -> None:
        """The consumer thread, per message: keeps it (a subclass may keep something else)."""
        self.messages.append((routing_key, body))

    def _run(self, queue: str) -> None:
        try:
            ch = self._conn.channel()
            ch.basic_qos(prefetch_count=1000)
            ch.basic_consume(queue, lambda c, m, p, body: self.on_message(m.routing_key, body), auto_ack=True)
            while not self._stop.is_set():
                self._conn.process_data_events(time_limit=0.1)
        except BaseException as e:
            self.error = e
        finally:
            with contextlib.suppress(Exception):
                self._conn.close()

    def wait(self, n: int, timeout: float = 20) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline and self.error is None:
            time.sleep(0.05)
        return list(self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@contextlib.contextmanager
def taking(secured: Secured, user: str = INGEST[0], node: int = 1) -> Iterator[Taken]:
    t = Taken(secured, user, node=node)
    try:
        yield t
    finally:
        t.close()
