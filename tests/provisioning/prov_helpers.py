"""Test helpers: MQTT probes that record what the broker allows, and registry entries with known secrets."""

from __future__ import annotations

import os
import queue
import select
import signal
import socket
import ssl
import subprocess
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from kerbside.core.registry import Device, Registry
from kerbside.core.settings import BrokerConfig, MqttConfig
from kerbside.devstack import LOOPBACK
from kerbside.provisioning.broker import INGEST_USER, OPERATOR_USER
from kerbside.provisioning.broker_dir import BrokerDir, TlsResult, account_password, write_all
from kerbside.provisioning.identity import new_secret
from kerbside.provisioning.passwd import hash_password

WAIT = 10.0


class Refused(Exception):
    pass


@dataclass
class Probe:
    """A paho client that records what it receives, for asserting on the broker's decisions."""

    client: mqtt.Client
    received: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    subacks: queue.Queue[list[int]] = field(default_factory=queue.Queue)
    session_present: bool = False
    disconnects: queue.Queue[object] = field(default_factory=queue.Queue)

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        self.client.subscribe(topic, qos)
        return self.subacks.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos)
        info.wait_for_publish(WAIT)
        return info

    def wait_for(self, topic: str) -> list[tuple[str, bytes]]:
        """Everything received up to and including the first message on `topic`."""
        seen = []
        while True:
            item = self.received.get(timeout=WAIT)
            seen.append(item)
            if item[0] == topic:
                return seen

    def take(self, n: int) -> list[tuple[str, bytes]]:
        """Exactly the next n messages (fails if they do not come within WAIT each)."""
        return [self.received.get(timeout=WAIT) for _ in range(n)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(port: int, user: str, password: str, ca: Path | None = None, client_id: str | None = None,
            clean: bool = True, v5: bool = False) -> Probe:
    """Connect and return a Probe, or raise Refused with the broker's reason code.

    clean=False keeps a persistent session (MQTT 3.1.1 clean session off; v5: clean start off, 1 h expiry), as
    nodes and the collector do.
    """
    cid = client_id or f"probe-{user}-{new_secret()[:6]}"
    if v5:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    else:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311, clean_session=clean)
    c.username_pw_set(user, password)
    if ca is not None:
        c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    probe = Probe(c)
    result: queue.Queue[object] = queue.Queue()

    def on_connect(_c: object, _u: object, flags: object, rc: object, _p: object) -> None:
        probe.session_present = bool(getattr(flags, "session_present", False))
        result.put(rc)

    c.on_connect = on_connect
    c.on_message = lambda _c, _u, msg: probe.received.put((msg.topic, msg.payload))
    c.on_subscribe = lambda _c, _u, _mid, rcs, _p: probe.subacks.put([r.value for r in rcs])
    c.on_disconnect = lambda _c, _u, _f, rc, _p: probe.disconnects.put(rc)
    props = None
    if v5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
    c.connect(LOOPBACK, port, keepalive=30, **({"clean_start": clean, "properties": props} if v5 else {}))
    c.loop_start()
    rc = result.get(timeout=WAIT)
    if getattr(rc, "is_failure", False):
        c.loop_stop()
        c.disconnect()
        raise Refused(str(rc))
    return probe


def wait_refused(port: int, user: str, password: str, ca: Path | None = None) -> None:
    """After a SIGHUP the broker re-reads its files asynchronously: poll until the credential stops working."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            connect(port, user, password, ca).close()
        except Refused:
            return
    raise AssertionError(f"{user} still accepted {WAIT} s after reload")


def add_device(registry: Registry, device_id: str, kit: str = "air", site: str = "test-site") -> str:
    secret = new_secret()
    with registry.edit() as devices:
        devices[device_id] = Device(id=device_id, kit=kit, site=site, zone="lez", password_hash=hash_password(secret))
    return secret


MPY_DIR = Path(__file__).resolve().parent.parent / "mpy"
ROOT = MPY_DIR.parent.parent


def standin_firmware(dest: Path) -> Path:
    """The real firmware with a stand-in self-test that can pass without hardware (see standin/selftest.py)."""
    import shutil

    shutil.copytree(ROOT / "firmware", dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(Path(__file__).resolve().parent / "standin" / "selftest.py", dest / "knode" / "selftest.py")
    return dest


@dataclass
class EmulatedBoard:
    """A pseudo-terminal whose far end is the real MicroPython VM (tests/mpy/device.mjs)."""

    port: str
    proc: subprocess.Popen[bytes]
    fds: tuple[int, int]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(WAIT)
        for fd in self.fds:
            os.close(fd)


BOOT_WAIT = 60.0
"""Loading the WebAssembly VM takes a fraction of a second, unless two cores are busy with everything else."""


def start_board() -> EmulatedBoard:
    """Start the VM and return once it shows its REPL prompt, like a board that has finished booting."""
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen(["node", str(MPY_DIR / "device.mjs"), "--fd", str(master)], pass_fds=(master,), cwd=MPY_DIR,
                            stdin=subprocess.DEVNULL)
    # The test keeps the slave open too, so the board survives the client closing and reopening the port.
    board = EmulatedBoard(os.ttyname(slave), proc, (master, slave))
    seen = b""
    deadline = time.monotonic() + BOOT_WAIT
    while b">>> " not in seen:
        if proc.poll() is not None or time.monotonic() > deadline:
            board.stop()
            raise RuntimeError(f"emulated board did not boot (exit {proc.returncode}); it printed {seen[-200:]!r}")
        ready, _, _ = select.select([slave], [], [], 0.1)
        if ready:
            seen += os.read(slave, 4096)
    return board


@dataclass
class RenderedBroker:
    """The real mosquitto running the very files `kerbside broker-config` writes, on loopback ports.

    Only the listeners' addresses, the log and the pid file's place differ from production, and those are
    settings (broker.tls_bind, broker.log_dest, broker.pid_file), not edits of the file.
    """

    root: Path
    registry: Registry
    settings: BrokerConfig
    secrets: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, root: Path, devices: tuple[str, ...] = (), **settings: object) -> RenderedBroker:
        import getpass

        from kerbside.devstack import free_port

        registry = Registry(root / "registry.json")
        state = root / "state"
        state.mkdir(parents=True, exist_ok=True)
        defaults: dict[str, object] = {
            "dir": str(root / "broker"), "hosts": ["127.0.0.1", "localhost"], "state_dir": str(state),
            "tls_port": free_port(), "tls_bind": LOOPBACK, "plain_port": free_port(),
            "pid_file": str(state / "mosquitto.pid"), "system_user": getpass.getuser(),
            "log_dest": f"file {state / 'mosquitto.log'}"}
        rb = cls(root, registry, BrokerConfig(**{**defaults, **settings}))  # type: ignore[arg-type]
        rb.secrets = {d: add_device(registry, d) for d in devices}
        rb.render()
        return rb

    @property
    def dir(self) -> BrokerDir:
        return BrokerDir(Path(self.settings.dir))

    @property
    def ca(self) -> Path:
        return self.dir.files.cafile

    @property
    def tls_port(self) -> int:
        return self.settings.tls_port

    @property
    def plain_port(self) -> int:
        return self.settings.plain_port

    @property
    def log(self) -> Path:
        return Path(self.settings.state_dir) / "mosquitto.log"

    def render(self, mqtt_cfg: MqttConfig | None = None) -> TlsResult:
        return write_all(self.dir, self.registry.load(), self.settings, mqtt_cfg)

    def secret(self, account: str) -> str:
        return account_password(self.dir, account)

    def start(self) -> RenderedBroker:
        from kerbside.devstack import require, wait_for

        self.log.touch()
        if os.geteuid() == 0:  # mosquitto opens its log after switching to its user
            import pwd

            os.chown(self.log, pwd.getpwnam(self.settings.system_user).pw_uid, -1)
        self.proc = subprocess.Popen([require("mosquitto", "mosquitto"), "-c", str(self.dir.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            for port in (self.plain_port, self.tls_port):
                with socket.create_connection((LOOPBACK, port), timeout=0.5):
                    pass
            return True

        wait_for(up, "mosquitto on the rendered config", WAIT, proc=self.proc, log=self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(WAIT)
        self.proc = None

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def node(self, device: str, client_id: str | None = None, clean: bool = True) -> Probe:
        return connect(self.tls_port, device, self.secrets[device], self.ca, client_id=client_id or device, clean=clean)

    def ingest(self, user: str = INGEST_USER, clean: bool = False) -> Probe:
        """A collector-like client: MQTT v5, persistent session, on the internal listener."""
        return connect(self.plain_port, user, self.secret(user), client_id=user, clean=clean, v5=True)

    def operator(self) -> Probe:
        return connect(self.plain_port, OPERATOR_USER, self.secret(OPERATOR_USER), client_id=OPERATOR_USER)

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")
