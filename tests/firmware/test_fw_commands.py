"""Commands to a running node (real firmware, simulated board) over the real broker, and their acks."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import time

import paho.mqtt.client as paho
import pytest

from kerbside.devstack import Mosquitto, free_port
from knode import cbor, node

from .conftest import node_config

DEV = "c0ffee01"
"""Each test has a device of its own (DEV with its last byte changed): a node stopped between a command's ack and
its PUBACK gets that command again (at least once, by design), and on a shared broker the next test would see it."""


class Link:
    def __init__(self, port: int, dev: str = DEV) -> None:
        self.dev = dev
        self.acks: queue.Queue[dict] = queue.Queue()
        self.status: queue.Queue[dict] = queue.Queue()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.c.on_message = self._msg
        ready: queue.Queue[bool] = queue.Queue()
        self.c.on_subscribe = lambda *a: ready.put(True)
        self.c.connect("127.0.0.1", port)
        self.c.subscribe([(f"kerbside/v1/{dev}/ack", 1), (f"kerbside/v1/{dev}/status", 1)])
        self.c.loop_start()
        ready.get(timeout=10)

    def _msg(self, c: object, u: object, m: paho.MQTTMessage) -> None:
        (self.acks if m.topic.endswith("/ack") else self.status).put(cbor.loads(m.payload))

    def send(self, cmd: dict) -> None:
        self.c.publish(f"kerbside/v1/{self.dev}/cmd", cbor.dumps(cmd), qos=1)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


async def _until(cond: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def _ack(link: Link, timeout: float = 10) -> dict:
    return await asyncio.to_thread(link.acks.get, True, timeout)


@pytest.mark.services
def test_config_commands_are_versioned_saved_and_acknowledged(mosquitto, make_board) -> None:
    dev = "c0ffee01"
    board = make_board(node_config(device=dev, port=mosquitto.port), speedup=50)
    link = Link(mosquitto.port, dev)

    async def go() -> list[dict]:
        n = node.Node(board)
        n.start()
        try:
            await _until(lambda: n.client is not None and n.client.connected and n.last_state is not None)
            acks = []
            link.send({"v": 1, "cmd": 11, "op": "set_interval", "cfg": 2, "args": {"period": 300, "sample": 30}})
            acks.append(await _ack(link))
            link.send({"v": 1, "cmd": 12, "op": "set_interval", "cfg": 2, "args": {"period": 900}})  # stale version
            acks.append(await _ack(link))
            link.send({"v": 1, "cmd": 13, "op": "set_calibration", "cfg": 3, "args": {"we0": "301.5", "sens": 1}})
            acks.append(await _ack(link))
            link.send({"v": 1, "cmd": 14, "op": "set_interval", "cfg": 4, "args": {"period": 7, "sample": 30}})
            acks.append(await _ack(link))
            link.send({"v": 1, "cmd": 15, "op": "dance"})
            acks.append(await _ack(link))
            link.send({"v": 2, "cmd": 16})
            acks.append(await _ack(link))
            return acks
        finally:
            n.stop()

    try:
        acks = asyncio.run(go())
    finally:
        link.close()
    did = bytes.fromhex(dev)
    assert acks[0] == {"v": 1, "id": did, "cmd": 11, "ok": True, "cfg": 2}
    assert acks[1] == {"v": 1, "id": did, "cmd": 12, "ok": True, "cfg": 2}  # already applied, unchanged
    assert acks[2] == {"v": 1, "id": did, "cmd": 13, "ok": True, "cfg": 3}
    assert acks[3]["ok"] is False and acks[3]["cfg"] == 3 and "sample" in acks[3]["err"]
    assert acks[4]["ok"] is False and "unknown op" in acks[4]["err"]
    assert acks[5] == {"v": 1, "id": did, "cmd": 0, "ok": False, "cfg": 3, "err": "bad command: not a v1 command map"}
    with open(board.path("/config.json")) as f:
        saved = json.load(f)
    assert (saved["period"], saved["sample"], saved["cfg"]) == (300, 30, 3)
    assert saved["cal"] == {"we0": 301.5, "sens": 1}


@pytest.mark.services
def test_status_command_and_unsigned_ota_refused(mosquitto, make_board) -> None:
    """Signed updates have their own tests (test_fw_ota*.py, tests/security/test_ota.py); the old unsigned
    single-file form, which could write any path, is refused."""
    dev = "c0ffee02"
    board = make_board(node_config(device=dev, port=mosquitto.port), speedup=50)
    link = Link(mosquitto.port, dev)
    new = b"# new application module\nVERSION = 2\n"

    async def go() -> tuple[list[dict], dict]:
        n = node.Node(board)
        n.start()
        try:
            await _until(lambda: n.client is not None and n.client.connected and n.last_state is not None)
            acks = []
            link.send({"v": 1, "cmd": 21, "op": "status"})
            acks.append(await _ack(link))
            status = {"online": False}
            while not status["online"]:  # skip a retained Last Will left by the previous test's node
                status = await asyncio.to_thread(link.status.get, True, 10)
            link.send({"v": 1, "cmd": 23, "op": "ota", "args": {"path": "/app.py", "data": new,
                                                             "sha256": hashlib.sha256(new).digest(), "last": True}})
            acks.append(await _ack(link))
            return acks, status
        finally:
            n.stop()

    with open(board.path("/app.py"), "wb") as f:
        f.write(b"VERSION = 1\n")
    try:
        acks, status = asyncio.run(go())
    finally:
        link.close()
    assert acks[0]["ok"] is True and status["online"] is True and status["id"] == bytes.fromhex(dev)
    assert set(status) >= {"v", "id", "online", "t", "synced", "fw", "kit", "up", "heap", "rssi", "buf", "drop",
                           "boot", "seq", "cfg", "health"}
    assert acks[1] == {"v": 1, "id": bytes.fromhex(dev), "cmd": 23, "ok": False, "cfg": 1,
                       "err": "ota: args need a manifest and sig, or a chunk (seq, file, off, data)"}
    assert open(board.path("/app.py"), "rb").read() == b"VERSION = 1\n"
    assert not os.path.exists(board.path("/ota.json"))


@pytest.mark.services
def test_reboot_command_acks_says_offline_and_resets(mosquitto, make_board) -> None:
    dev = "c0ffee03"
    from kerbside.simulator.hardware import Reboot

    board = make_board(node_config(device=dev, port=mosquitto.port), speedup=50)
    link = Link(mosquitto.port, dev)

    async def go() -> tuple[dict, BaseException | None]:
        n = node.Node(board)
        n.start()
        try:
            await _until(lambda: n.client is not None and n.client.connected and n.last_state is not None)
            link.send({"v": 1, "cmd": 31, "op": "reboot"})
            ack = await _ack(link)
            await _until(lambda: n.tasks[1].done())
            return ack, n.tasks[1].exception()
        finally:
            n.stop()

    try:
        ack, exc = asyncio.run(go())
        statuses = []
        while not link.status.empty():
            statuses.append(link.status.get())
    finally:
        link.close()
    assert ack == {"v": 1, "id": bytes.fromhex(dev), "cmd": 31, "ok": True, "cfg": 1}
    assert isinstance(exc, Reboot)  # machine.reset() on the device
    assert statuses[-1] == {"v": 1, "id": bytes.fromhex(dev), "online": False}


@pytest.mark.services
def test_a_burst_of_commands_loses_none_and_an_oversize_one_is_refused_once(make_board, tmp_path) -> None:
    """More commands than the node takes at once stay with the broker (acknowledged only once handled), and a
    command too large for the node's RAM is refused with one ack instead of killing the connection on every
    redelivery (a reconnect loop).

    kerbside's own broker config (max_packet_size) already refuses such a command at the broker; the node must
    not depend on that (another broker, e.g. RabbitMQ, has other limits), so this broker lets it through."""
    dev = "c0ffee04"
    broker = Mosquitto("mosquitto", tmp_path / "broker", free_port(), extra="max_packet_size 65536\n").start()
    board = make_board(node_config(device=dev, port=broker.port), speedup=50)
    link = Link(broker.port, dev)

    async def go() -> tuple[list[dict], int]:
        n = node.Node(board)
        n.start()
        try:
            await _until(lambda: n.client is not None and n.client.connected and n.last_state is not None)
            big = cbor.dumps({"v": 1, "cmd": 200, "op": "status", "pad": b"x" * 20000})
            link.c.publish(f"kerbside/v1/{dev}/cmd", big, qos=1)
            for i in range(12):
                link.send({"v": 1, "cmd": 100 + i, "op": "status"})
            acks = [await _ack(link, 20) for _ in range(13)]
            with pytest.raises(queue.Empty):
                await asyncio.to_thread(link.acks.get, True, 2)  # nothing comes back a second time
            return acks, n.cmds_done
        finally:
            n.stop()

    try:
        acks, done = asyncio.run(go())
    finally:
        link.close()
        broker.stop()
    assert sorted(a["cmd"] for a in acks) == [0, *range(100, 112)] and done == 13
    big = next(a for a in acks if a["cmd"] == 0)
    assert big["ok"] is False and "too large" in big["err"]
    assert all(a["ok"] for a in acks if a["cmd"])
