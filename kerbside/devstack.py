"""Start Mosquitto and InfluxDB 1.x as child processes on loopback.

Used by the test fixtures, the demo and the benchmarks, so that all three run
against the same real brokers configured the same way: persistence on, queue
limits raised, loopback only, everything under one state directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    pass


PORT_ATTEMPTS = 5
"""Starts on a fresh port before giving up, when another process takes the port between free_port() and the bind."""


def free_port() -> int:
    """A loopback port free now; another process may take it before ours binds it (Service.start retries)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def listening(pid: int, port: int) -> bool | None:
    """Whether process pid holds a listening TCP socket on port (None: no /proc to tell).

    A connect or an HTTP ping succeeds against whatever owns the port; this asks the kernel whose
    socket it is, so a service is never taken as ready because another process took its port."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{f[9]}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None if not Path("/proc/net/tcp").exists() else False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
    return False


def _said_port_taken(marks: dict[Path, int]) -> bool:
    """Whether any of the logs, past the given offsets, says a port was already in use."""
    for path, offset in marks.items():
        with contextlib.suppress(OSError), open(path, "rb") as f:
            f.seek(offset)
            if b"address already in use" in f.read().lower():
                return True
    return False


def _marks(*paths: Path) -> dict[Path, int]:
    return {p: p.stat().st_size if p.exists() else 0 for p in paths}


def require(binary: str, package: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if path is None:
        raise ServiceError(f"{binary} not found: install it with `apt-get install {package}` (or run `make test`)")
    return path


def _tail(logs: tuple[Path, ...]) -> str:
    return "\n".join(p.read_text(errors="replace")[-2000:] for p in logs if p.exists()).strip()


def _wait(check: callable, what: str, proc: subprocess.Popen[bytes], logs: tuple[Path, ...], timeout: float) -> None:  # type: ignore[valid-type]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with {proc.returncode}; log:\n{_tail(logs)}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            if check():
                return
        time.sleep(0.05)
    raise ServiceError(f"{what} not ready after {timeout:.0f} s; log:\n{_tail(logs)}")


@dataclass
class Service:
    """A child process with its state directory; stop() is idempotent."""

    name: str
    state: Path
    port: int
    """0: any free port, chosen by start(). Read .port/.url after start(): the port may change there."""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started: bool = field(default=False, repr=False)
    """Has run once: a restart keeps its port, since clients know it."""

    def _start(self, launch: callable, ready: callable, logs: tuple[Path, ...], timeout: float) -> None:  # type: ignore[valid-type]
        """launch() (writes the config for self.port and spawns self.proc) until ready().

        free_port() and the service's bind are separate, so another process can take the port in
        between: then the service exits saying so, and a service that never ran tries a fresh port
        (PORT_ATTEMPTS in all). Any other failure, or a taken port on restart, is a ServiceError."""
        if not self.port:
            self.port = free_port()
        for attempt in range(PORT_ATTEMPTS):
            marks = _marks(*logs)
            launch()
            try:
                _wait(ready, self.name, self.proc, logs, timeout)  # type: ignore[arg-type]
            except ServiceError:
                if self.started or attempt == PORT_ATTEMPTS - 1 or not _said_port_taken(marks):
                    raise
                self.port = free_port()
                continue
            self.started = True
            return

    @property
    def log(self) -> Path:
        return self.state / f"{self.name}.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


MOSQUITTO_BASE = """\
# Written by kerbside; see collector/deploy/mosquitto.conf for production.
per_listener_settings false
persistence true
persistence_location {state}/
autosave_interval 1
autosave_on_changes false
# Defaults drop QoS1 messages for a slow or offline subscriber past 1000: raise.
max_queued_messages {max_queued}
max_queued_bytes 0
max_inflight_messages 100
persistent_client_expiration 30d
log_dest file {state}/mosquitto.log
log_type error
log_type warning
log_type notice
connection_messages true
listener {port} {host}
"""


@dataclass
class Mosquitto(Service):
    extra: str = ""
    anonymous: bool = True
    max_queued: int = 1_000_000

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def log(self) -> Path:
        return self.state / "mosquitto.log"  # where MOSQUITTO_BASE has it write, whatever the service's name

    def config(self) -> str:
        text = MOSQUITTO_BASE.format(state=self.state, port=self.port, host=LOOPBACK, max_queued=self.max_queued)
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to user "mosquitto", which cannot write a root-owned state
            # directory: persistence would fail silently and a restart would lose queued messages.
            text += "user root\n"
        if self.anonymous:
            text += "allow_anonymous true\n"
        return text + self.extra

    def start(self, timeout: float = 15) -> Mosquitto:
        binary = require("mosquitto", "mosquitto")
        self.state.mkdir(parents=True, exist_ok=True)
        conf = self.state / "mosquitto.conf"
        stdout = self.state / "mosquitto.stdout"  # "Address already in use" goes to stderr

        def launch() -> None:
            conf.write_text(self.config())
            out = open(stdout, "ab")  # owned by the child
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            self.log.touch()

        def ready() -> bool:
            assert self.proc is not None
            if listening(self.proc.pid, self.port) is False:
                return False
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                return True

        self._start(launch, ready, (self.log, stdout), timeout)
        return self


INFLUXD_CONF = """\
reporting-disabled = true
bind-address = "{host}:{rpc_port}"
[meta]
  dir = "{state}/meta"
  logging-enabled = false
[data]
  dir = "{state}/data"
  wal-dir = "{state}/wal"
  query-log-enabled = false
  trace-logging-enabled = false
  wal-fsync-delay = "0s"
  cache-max-memory-size = "256m"
  max-series-per-database = 0
  max-values-per-tag = 0
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "{host}:{port}"
  auth-enabled = false
  log-enabled = false
  max-body-size = 0
  max-connection-limit = 0
[continuous_queries]
  enabled = true
  log-enabled = false
  run-interval = "{cq_interval}"
[logging]
  level = "warn"
  suppress-logo = true
[subscriber]
  enabled = false
"""


@dataclass
class Influxd(Service):
    rpc_port: int = 0
    cq_interval: str = "1s"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 60) -> Influxd:
        binary = require("influxd", "influxdb")
        self.state.mkdir(parents=True, exist_ok=True)
        conf = self.state / "influxdb.conf"
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        launches = []

        def launch() -> None:
            if not self.rpc_port or (launches and not self.started):
                self.rpc_port = free_port()  # a retry: either port may have been the one taken
            launches.append(self.port)
            conf.write_text(INFLUXD_CONF.format(state=self.state, host=LOOPBACK, port=self.port,
                                                rpc_port=self.rpc_port, cq_interval=self.cq_interval))
            log = open(self.log, "ab")  # owned by the child
            self.proc = subprocess.Popen([binary, "-config", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)

        def ready() -> bool:
            assert self.proc is not None
            if listening(self.proc.pid, self.port) is False:
                return False
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                return bool(r.status == 204)

        self._start(launch, ready, (self.log,), timeout)
        return self


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.stop()
