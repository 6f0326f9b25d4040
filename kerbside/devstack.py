"""The development stack: Mosquitto, InfluxDB 1.x and the collector as child processes on loopback.

NOT FOR PRODUCTION: anonymous MQTT, no TLS, no auth on InfluxDB. It serves the
test fixtures, the demo and the benchmarks, so that all three run against the
same real services started the same way, everything under one state directory.
Mosquitto gets the production durability settings
(kerbside.provisioning.broker.render_base: persistence, queue and in-flight
limits) and, added here, only what is dev-specific: anonymous clients on a
loopback listener, a log file in its state directory. Production brokers are
configured by `kerbside broker-config` (docs/collector.md).

Also the one way the dev tools wait for something (wait_for), read the
collector's /metrics (scrape_metrics, with prometheus_client's own parser) and
open a page in a real browser (headless_chromium: Debian's chromium through
Debian's chromium-driver, driven by selenium from the dev extra).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from kerbside.core.errors import ServiceError
from kerbside.core.settings import Config, MqttConfig, child_env
from kerbside.core.settings import load as load_settings
from kerbside.provisioning.broker import render_base

LOOPBACK = "127.0.0.1"


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


T = TypeVar("T")


def wait_for(cond: Callable[[], T], what: str, timeout: float = 30, *, proc: subprocess.Popen[bytes] | None = None,
             log: Path | tuple[Path, ...] | None = None, interval: float = 0.05) -> T:
    """Poll cond() until it returns something truthy, and return that.

    OSError from cond() (a port or endpoint not up yet) counts as "not yet". With `proc`, the process
    exiting first fails at once rather than after the timeout; `log`'s tail goes into the error.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what}: the process exited with {proc.returncode}{_tail(log)}")
        with contextlib.suppress(OSError):
            if value := cond():
                return value
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout:g} s waiting for {what}{_tail(log)}")
        time.sleep(interval)


def _tail(log: Path | tuple[Path, ...] | None) -> str:
    logs = () if log is None else (log,) if isinstance(log, Path) else log
    return "".join(f"; log {p}:\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists())


def parse_metrics(text: str) -> dict[str, float]:
    """A Prometheus text exposition as {'name': value, 'name{k="v",…}': value}, labels sorted.

    Samples of one name with labels are also summed under the bare name, so that
    `kerbside_rejected_total` answers "how many, whatever the reason".
    """
    out: dict[str, float] = {}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
                sums[s.name] = sums.get(s.name, 0.0) + s.value
            else:
                out[s.name] = s.value
    for name, v in sums.items():
        out.setdefault(name, v)
    return out


def scrape_metrics(port: int, host: str = LOOPBACK, timeout: float = 5.0,
                   auth: tuple[str, str] | None = None) -> dict[str, float]:
    """The collector's /metrics, parsed, with the operator credential (user, password) if it has one; raises
    OSError while the endpoint is not up."""
    headers = {}
    if auth is not None:
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(f"http://{host}:{port}/metrics", headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return parse_metrics(r.read().decode())


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
                wait_for(ready, self.name, timeout, proc=self.proc, log=logs)
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

    @property
    def log(self) -> Path:
        return self.state / "mosquitto.log"  # where MOSQUITTO_BASE has it write, whatever the service's name

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


@dataclass
class CollectorProcess(Service):
    """`python -m kerbside collect` as a child process, configured through the environment only.

    `port` is its /metrics port; `settings` ({section: {key: value}}) is everything else. start() returns
    once the broker has accepted its subscriptions (or its AMQP consumer), read from its own /metrics.
    """

    settings: Config | Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def config(self) -> Config:
        """The settings model for the child: a Config as given, or {section: {key: value}} on top of the defaults
        (no settings file, no KERBSIDE_* variable of the caller's), always with http.port = self.port."""
        if isinstance(self.settings, Config):
            cfg = copy.deepcopy(self.settings)
        else:
            flat = {f"{sec}.{key}": str(v) if isinstance(v, os.PathLike) else v
                    for sec, values in self.settings.items() for key, v in values.items()}
            cfg = load_settings(env={"KERBSIDE_CONFIG": ""}, overrides=flat)
        cfg.http.port = self.port
        return cfg

    def start(self, wait: bool = True, timeout: float = 30) -> CollectorProcess:
        """Start it; with `wait`, until the broker has accepted its subscriptions (and on a fresh /metrics port
        if another process took this one first). Without `wait` (a broker that is down on purpose), no retry."""
        self.state.mkdir(parents=True, exist_ok=True)

        def launch() -> None:
            out = open(self.log, "ab")  # owned by the child
            self.proc = subprocess.Popen([sys.executable, "-m", "kerbside", "collect"], env=child_env(self.config()),
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            out.close()

        def ready() -> bool:
            assert self.proc is not None
            ours = listening(self.proc.pid, self.port) is not False  # not another process's /metrics
            m = self.metrics() or {}
            return ours and (m.get("kerbside_mqtt_subscribed") == 1 or m.get("kerbside_amqp_consuming") == 1)

        if wait:
            self._start(launch, ready, (self.log,), timeout)
        else:
            self.port = self.port or free_port()
            launch()
        return self

    def metrics(self) -> dict[str, float] | None:
        """Its /metrics, or None while the endpoint is not up."""
        http = self.config().http
        try:
            return scrape_metrics(self.port, auth=(http.user, http.password) if http.password else None)
        except OSError:
            return None


CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")
"""Headless and quiet: no sandbox (it needs user namespaces containers lack), no GPU, nothing fetched in the
background; with a fresh profile (--user-data-dir) per start."""


def headless_chromium(profile: Path, width: int = 1400, height: int = 1000):  # type: ignore[no-untyped-def]
    """A selenium WebDriver on Debian's headless Chromium; quit() it. Never downloads a browser or a driver: the
    driver's path is given, so Selenium Manager stays out of it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    browser, driver = CHROMIUM
    require("chromium", "chromium")
    require("chromedriver", "chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=DriverService(executable_path=driver), options=opts)


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.stop()
