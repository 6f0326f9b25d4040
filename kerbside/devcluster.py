"""A local N-node RabbitMQ cluster on loopback, for the tests, the demo and the benchmarks.

NOT FOR PRODUCTION: every node runs on this host under one temp directory, with
one Erlang cookie for all, and (unless the caller applies `kerbside
broker-config --engine rabbitmq`) the default guest account on a loopback
listener. A production cluster is one node per host, set up as docs/scaling.md
describes; what it needs beyond the package defaults is rendered by
`kerbside broker-config --engine rabbitmq` (kerbside.provisioning.rabbitmq).

Each node is Debian's rabbitmq-server started directly from
/usr/lib/rabbitmq/bin (the /usr/sbin wrappers switch to the rabbitmq user and
its cookie), with its own node name, AMQP, MQTT and distribution ports, data
and log directories and a config that names the other nodes
(classic_config peer discovery). The cluster gets a private epmd on a port of
its own (ERL_EPMD_PORT), started here, so it never meets the host's epmd or
another test's cluster, and it is stopped by its pid: epmd outlives the nodes
otherwise. Every process is started in a session of its own and stopped by its
process group, never by name.

The base of each node's config (quorum queues for MQTT sessions, retained
messages, size limits) is the production one, kerbside.provisioning.rabbitmq.
render_node_conf; only the listeners, peers and dev account are added here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kerbside.core.errors import ServiceError
from kerbside.devstack import LOOPBACK, free_port, listening, require, wait_for
from kerbside.provisioning import rabbitmq

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
"""The scripts without Debian's user-switching wrappers."""
START_TIMEOUT = 120.0
"""A cold node boots in ~10 s alone; three on two busy cores take longer."""
INETRC = """\
%% kerbside dev cluster: node names are name@localhost, and "localhost" must resolve even where
%% /etc/hosts lacks it (a bare chroot or container): Erlang's own host table first, then the OS.
{host, {127,0,0,1}, ["localhost"]}.
{lookup, [file, native]}.
"""
ERL_ARGS = "+sbwt none +sbwtdcpu none +sbwtdio none -kernel inet_dist_use_interface {127,0,0,1}"
"""Erlang schedulers spin while idle by default: on a shared machine three idle nodes would eat the cores. The
distribution port listens on loopback only (the default is every address)."""


def binaries() -> tuple[Path, Path]:
    """rabbitmq-server and rabbitmqctl of the installed package (ServiceError naming the package if missing)."""
    require("rabbitmq-server", "rabbitmq-server")
    server, ctl = RABBIT_BIN / "rabbitmq-server", RABBIT_BIN / "rabbitmqctl"
    if not (server.exists() and ctl.exists()):
        raise ServiceError(f"{RABBIT_BIN} lacks rabbitmq-server or rabbitmqctl: reinstall Debian's rabbitmq-server")
    return server, ctl


def epmd_binary() -> str:
    found = shutil.which("epmd") or next((str(p) for p in Path("/usr/lib/erlang/erts-").parent.glob("erts-*/bin/epmd")), None)
    if found is None:
        raise ServiceError("epmd not found: install Debian's erlang-base (rabbitmq-server depends on it)")
    return found


def _stop_group(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    """Signal the process's group (it was started in a session of its own) and wait for the process."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # the group's other members (beam's port helpers) may outlive the leader for a moment
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class RabbitNode:
    """One node of the cluster; its ports stay the same across restarts (clients and peers know them)."""

    index: int
    """1-based."""
    name: str
    """Erlang node name, kbN@localhost."""
    state: Path
    amqp_port: int
    mqtt_port: int
    dist_port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def amqp_url(self) -> str:
        return f"amqp://{LOOPBACK}:{self.amqp_port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.mqtt_port}"

    @property
    def log(self) -> Path:
        return self.state / "log" / f"{self.name}.log"

    @property
    def stdout(self) -> Path:
        return self.state / "stdout.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The Erlang VM's pid (beam.smp), the process that holds the node's sockets and memory."""
        if self.proc is None:
            return None
        for child in _children(self.proc.pid):
            return child
        return self.proc.pid


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class RabbitCluster:
    """An N-node RabbitMQ cluster under `root`: start(), stop(); kill(i) and restart(i) one node."""

    root: Path
    size: int = 3
    anonymous: bool = True
    """Dev: MQTT clients without credentials are the guest account (loopback only). False: accounts only,
    e.g. after applying `kerbside broker-config --engine rabbitmq`."""
    max_message: int = rabbitmq.MAX_MESSAGE
    nodes: list[RabbitNode] = field(default_factory=list)
    epmd_port: int = 0
    _epmd: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    cookie: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("a cluster has at least one node")
        tag = f"kb{os.getpid() % 10000}x{id(self) % 1000}"  # unique node names per cluster on this host
        if not self.nodes:
            self.nodes = [RabbitNode(i, f"{tag}n{i}@localhost", self.root / f"node{i}", free_port(), free_port(), free_port())
                          for i in range(1, self.size + 1)]

    # --- environment -------------------------------------------------------------------------------
    @property
    def home(self) -> Path:
        """HOME for every node and rabbitmqctl: the shared Erlang cookie is HOME/.erlang.cookie."""
        return self.root / "home"

    @property
    def inetrc(self) -> Path:
        """Erlang's resolver config for every node and rabbitmqctl (INETRC)."""
        return self.root / "inetrc"

    def env(self, node: RabbitNode | None = None) -> dict[str, str]:
        """What a node or rabbitmqctl needs: cookie (HOME), the private epmd, and no system config."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_")) and k != "HOME"}
        env = {**keep, "HOME": str(self.home), "ERL_EPMD_PORT": str(self.epmd_port), "ERL_INETRC": str(self.inetrc),
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf")}
        if node is not None:
            s = node.state
            env.update({
                "RABBITMQ_NODENAME": node.name, "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
                "RABBITMQ_NODE_PORT": str(node.amqp_port), "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_CONFIG_FILE": str(s / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(s / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(s / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(s / "mnesia"), "RABBITMQ_LOG_BASE": str(s / "log"),
                "RABBITMQ_PID_FILE": str(s / "rabbit.pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": ERL_ARGS,
            })
        return env

    def config(self, node: RabbitNode) -> str:
        peers = [n.name for n in self.nodes]
        dev = "mqtt.allow_anonymous = true\n" if self.anonymous else "mqtt.allow_anonymous = false\n"
        return (rabbitmq.DEV_HEADER
                + rabbitmq.render_node_conf(peers, amqp=f"{LOOPBACK}:{node.amqp_port}", mqtt=f"{LOOPBACK}:{node.mqtt_port}",
                                            max_message=self.max_message)
                + "\n# development only\n" + dev + "loopback_users.guest = true\nlog.console = false\nlog.file.level = info\n")

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> RabbitCluster:
        """Start epmd and every node; returns once all are running as one cluster with the MQTT plugin up."""
        server, _ = binaries()
        self.root.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        (self.root / "rabbitmq-env.conf").write_text("# kerbside dev cluster: no system rabbitmq-env.conf\n")
        self.inetrc.write_text(INETRC)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self.cookie or os.urandom(16).hex())
            cookie.chmod(0o400)
        self.cookie = cookie.read_text()
        self._start_epmd()
        try:
            # The first node forms the cluster; the others join it once it is up (started together,
            # two could each form a cluster of their own).
            self._launch(self.nodes[0], server)
            self._wait_up(self.nodes[0], timeout)
            for n in self.nodes[1:]:
                self._launch(n, server)
            for n in self.nodes[1:]:
                self._wait_up(n, timeout)
            self.wait_clustered(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return
        binary = epmd_binary()
        for _ in range(5):
            self.epmd_port = free_port()
            log = open(self.root / "epmd.log", "ab")
            self._epmd = subprocess.Popen([binary, "-port", str(self.epmd_port), "-address", LOOPBACK],
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                          env={**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)})
            log.close()
            try:
                wait_for(lambda: listening(self._epmd.pid, self.epmd_port), "epmd", 10, proc=self._epmd)  # type: ignore[union-attr]
                return
            except ServiceError:
                _stop_group(self._epmd, signal.SIGKILL, 5)
        raise ServiceError("epmd did not start on a free port (5 tries)")

    def _launch(self, node: RabbitNode, server: Path) -> None:
        s = node.state
        for d in (s, s / "mnesia", s / "log"):
            d.mkdir(parents=True, exist_ok=True)
        (s / "rabbitmq.conf").write_text(self.config(node))
        (s / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        out = open(node.stdout, "ab")
        node.proc = subprocess.Popen([str(server)], env=self.env(node), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=s)
        out.close()

    def _wait_up(self, node: RabbitNode, timeout: float) -> None:
        """Running: its MQTT listener accepts (the plugin starts last)."""
        def up() -> bool:
            pid = node.pid
            return pid is not None and bool(listening(pid, node.mqtt_port)) and bool(listening(pid, node.amqp_port))
        wait_for(up, f"RabbitMQ node {node.name}", timeout, proc=node.proc, log=(node.stdout, node.log), interval=0.2)

    def wait_clustered(self, timeout: float = 60) -> None:
        """Every running node sees every other running node."""
        want = {n.name for n in self.nodes if n.running()}
        wait_for(lambda: all(set(self.running_nodes(n)) >= want for n in self.nodes if n.running()),
                 f"the cluster of {', '.join(sorted(want))}", timeout, interval=0.5)

    def running_nodes(self, node: RabbitNode) -> list[str]:
        """The cluster's running nodes as `node` sees them (rabbitmqctl eval; [] if it does not answer)."""
        try:
            out = self.ctl(node, "eval", "rabbit_nodes:all_running().", timeout=30)
        except ServiceError:
            return []
        return [p.strip().strip("'") for p in out.strip().strip("[]").split(",") if p.strip()]

    def ctl(self, node: RabbitNode, *args: str, timeout: float = 60, input: str | None = None) -> str:
        """rabbitmqctl -n <node> ARGS: its stdout, or ServiceError with its stderr."""
        _, ctl = binaries()
        p = subprocess.run([str(ctl), "-q", "-n", node.name, *args], env=self.env(), capture_output=True, text=True,
                           timeout=timeout, input=input, start_new_session=True)
        if p.returncode != 0:
            raise ServiceError(f"rabbitmqctl {' '.join(args)} on {node.name}: exit {p.returncode}: "
                               f"{(p.stderr or p.stdout).strip()[-1000:]}")
        return p.stdout

    def ctl_shim(self, node: RabbitNode | None = None) -> Path:
        """A directory with a `rabbitmqctl` that reaches this cluster (its cookie, its epmd, `node`): put it first
        on PATH to run what an operator runs on a cluster host (`kerbside broker-config --engine rabbitmq --apply`)."""
        _, ctl = binaries()
        target = node or self.nodes[0]
        bindir = self.root / "bin"
        bindir.mkdir(exist_ok=True)
        shim = bindir / "rabbitmqctl"
        shim.write_text(f"#!/bin/sh\n# kerbside dev cluster: rabbitmqctl on {target.name}\n"
                        f"export HOME='{self.home}' ERL_EPMD_PORT={self.epmd_port} ERL_INETRC='{self.inetrc}'\n"
                        f"exec '{ctl}' -n '{target.name}' \"$@\"\n")
        shim.chmod(0o755)
        return bindir

    def any_running(self) -> RabbitNode:
        for n in self.nodes:
            if n.running():
                return n
        raise ServiceError("no node of the cluster is running")

    def kill(self, index: int) -> None:
        """SIGKILL one node (1-based), as a power cut or an OOM kill would: no clean shutdown, no goodbye to peers."""
        node = self.nodes[index - 1]
        _stop_group(node.proc, signal.SIGKILL, 10)
        node.proc = None

    def stop_node(self, index: int, timeout: float = 60) -> None:
        node = self.nodes[index - 1]
        _stop_group(node.proc, signal.SIGTERM, timeout)
        node.proc = None

    def restart(self, index: int, timeout: float = START_TIMEOUT) -> None:
        """Start a stopped or killed node again on its ports and data; returns once it is back in the cluster."""
        server, _ = binaries()
        node = self.nodes[index - 1]
        if node.running():
            return
        self._launch(node, server)
        self._wait_up(node, timeout)
        self.wait_clustered(timeout)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL), then epmd: nothing of the cluster outlives this."""
        for n in self.nodes:
            _stop_group(n.proc, signal.SIGTERM, 30)
            n.proc = None
        _stop_group(self._epmd, signal.SIGTERM, 5)
        self._epmd = None

    # --- what the tests ask -------------------------------------------------------------------------
    def node_by_name(self, name: str) -> RabbitNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def leader(self, queue: str, vhost: str = "/") -> RabbitNode:
        """The node that leads a quorum queue now (kill this one to test a leader failover)."""
        out = self.ctl(self.any_running(), "list_queues", "-p", vhost, "name", "leader", "--no-table-headers")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return self.node_by_name(parts[1])
        raise ServiceError(f"queue {queue!r} not found in vhost {vhost!r}:\n{out}")

    def queue_depth(self, queue: str, vhost: str = "/") -> tuple[int, int]:
        """(ready, unacked) messages of a queue."""
        out = self.ctl(self.any_running(), "list_queues", "-p", vhost, "name", "messages_ready",
                       "messages_unacknowledged", "--no-table-headers")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == queue:
                return int(parts[1]), int(parts[2])
        raise ServiceError(f"queue {queue!r} not found")

    def rss_mib(self) -> list[float]:
        """Each running node's resident memory."""
        return [rss_kib(n.pid) / 1024 for n in self.nodes if n.running() and n.pid is not None]

    def mqtt_endpoints(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, n.mqtt_port) for n in self.nodes]

    def amqp_urls(self, nodes: Sequence[RabbitNode] | None = None) -> list[str]:
        return [n.amqp_url for n in (nodes or self.nodes)]


@contextlib.contextmanager
def running(root: Path, size: int = 3, **kw: object) -> Iterator[RabbitCluster]:
    cluster = RabbitCluster(root, size, **kw)  # type: ignore[arg-type]
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def wait_s(since: float) -> float:
    return time.monotonic() - since
