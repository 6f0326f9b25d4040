"""Test helpers: MQTT probes that record what the broker allows, and registry entries with known secrets."""

from __future__ import annotations

import os
import queue
import select
import ssl
import subprocess
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from kerbside.core.registry import Device, Registry
from kerbside.devstack import LOOPBACK
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

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        self.client.subscribe(topic, qos)
        return self.subacks.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos)
        info.wait_for_publish(WAIT)

    def wait_for(self, topic: str) -> list[tuple[str, bytes]]:
        """Everything received up to and including the first message on `topic`."""
        seen = []
        while True:
            item = self.received.get(timeout=WAIT)
            seen.append(item)
            if item[0] == topic:
                return seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(port: int, user: str, password: str, ca: Path | None = None, client_id: str | None = None) -> Probe:
    """Connect and return a Probe, or raise Refused with the broker's reason code."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"probe-{user}-{new_secret()[:6]}",
                    protocol=mqtt.MQTTv311)
    c.username_pw_set(user, password)
    if ca is not None:
        c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    probe = Probe(c)
    result: queue.Queue[object] = queue.Queue()
    c.on_connect = lambda _c, _u, _f, rc, _p: result.put(rc)
    c.on_message = lambda _c, _u, msg: probe.received.put((msg.topic, msg.payload))
    c.on_subscribe = lambda _c, _u, _mid, rcs, _p: probe.subacks.put([r.value for r in rcs])
    c.connect(LOOPBACK, port, keepalive=30)
    c.loop_start()
    rc = result.get(timeout=WAIT)
    if getattr(rc, "is_failure", False):
        c.loop_stop()
        c.disconnect()
        raise Refused(str(rc))
    return probe


def add_device(registry: Registry, device_id: str, kit: str = "air", site: str = "test-site") -> str:
    secret = new_secret()
    with registry.edit() as devices:
        devices[device_id] = Device(id=device_id, kit=kit, site=site, zone="lez", password_hash=hash_password(secret))
    return secret


MPY_DIR = Path(__file__).resolve().parent.parent / "mpy"


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
