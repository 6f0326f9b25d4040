"""Start Mosquitto and InfluxDB 1.x as child processes on loopback: the development stack, NOT for production.

Used by the test fixtures, the demo and the benchmarks, so that all three run
against the same real brokers configured the same way, everything under one
state directory. Mosquitto gets the production durability settings
(kerbside.provisioning.broker.render_base: persistence, queue and in-flight
limits) and, added here, only what is dev-specific: anonymous clients on a
loopback listener, a log file in its state directory. Production brokers are
configured by `kerbside broker-config`.
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

from kerbside.core.errors import ServiceError
from kerbside.core.settings import MqttConfig
from kerbside.provisioning.broker import render_base

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def require(binary: str, package: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if path is None:
        raise ServiceError(f"{binary} not found: install it with `apt-get install {package}` (or run `make test`)")
    return path


def _wait(check: callable, what: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:  # type: ignore[valid-type]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with {proc.returncode}; log:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            if check():
                return
        time.sleep(0.05)
    raise ServiceError(f"{what} not ready after {timeout:.0f} s; log:\n{log.read_text()[-2000:]}")


@dataclass
class Service:
    """A child process with its state directory; stop() is idempotent."""

    name: str
    state: Path
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

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


DEV_HEADER = """\
# kerbside DEVELOPMENT broker (tests, demo, benchmarks): NOT FOR PRODUCTION. Anonymous clients on a
# loopback listener. Production brokers are configured by `kerbside broker-config`.
"""


@dataclass
class Mosquitto(Service):
    extra: str = ""
    anonymous: bool = True
    max_queued: int = 1_000_000

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def config(self) -> str:
        text = (DEV_HEADER + render_base(self.state, self.max_queued, MqttConfig(), log_dest=f"file {self.state}/mosquitto.log")
                + f"listener {self.port} {LOOPBACK}\n")
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
        conf.write_text(self.config())
        out = open(self.state / "mosquitto.stdout", "ab")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.log.touch()

        def ready() -> bool:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                return True

        _wait(ready, "mosquitto", self.proc, self.log, timeout)
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
        if not self.rpc_port:
            self.rpc_port = free_port()
        conf = self.state / "influxdb.conf"
        conf.write_text(INFLUXD_CONF.format(state=self.state, host=LOOPBACK, port=self.port,
                                            rpc_port=self.rpc_port, cq_interval=self.cq_interval))
        log = open(self.log, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        self.proc = subprocess.Popen([binary, "-config", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                return bool(r.status == 204)

        _wait(ready, "influxd", self.proc, self.log, timeout)
        return self


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.stop()
