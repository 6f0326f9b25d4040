"""Signed updates through the real broker: `kerbside release push` to a running node, its reboot through main.py
into the update (in an interpreter of its own), trial, rollback, a shadowed update, and safe mode.

The node is the real firmware on a simulated board (CPython); the VM tests
(test_fw_ota_mpy.py) run the same firmware under MicroPython.
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as paho
import pytest

import knode
from kerbside.collector.decode import decode
from kerbside.core import release as rel
from kerbside.provisioning.release import Broker, push
from knode import node, ota, safemode

from .conftest import node_config
from .ota_helpers import MAIN, ota_cmd, real_files, tiny_files

pytestmark = pytest.mark.services
RUNNER = Path(__file__).resolve().parent / "ota_boot.py"
SPEEDUP = 50.0


@pytest.fixture(scope="module")
def key():
    return rel.new_key()


def _main() -> dict:
    ns: dict = {"__name__": "kmain"}
    exec(compile(MAIN.read_text(), str(MAIN), "exec"), ns)
    return ns


def _journal(board) -> dict:
    return json.loads(Path(board.path("/ota.json")).read_text())


async def _until(cond, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _boot(board, trial_s: int = 600) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    """Power the node on again: main.py in a new interpreter, on the same flash."""
    return subprocess.Popen([sys.executable, str(RUNNER), board.root, "air", str(SPEEDUP), str(trial_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_push_installs_the_node_reboots_into_it_and_keeps_it(mosquitto, make_board, key) -> None:
    dev = "0a7a0001"
    board = make_board(node_config(device=dev, port=mosquitto.port), speedup=SPEEDUP)
    Path(board.path("/release.pub")).write_bytes(rel.point(key))
    release = rel.build(real_files("2.0.0"), 1000, "2.0.0", key)
    said: list[str] = []

    async def go() -> tuple[object, BaseException | None, str]:
        n = node.Node(board)
        n.start()
        await _until(lambda: n.client is not None and n.client.connected and n.last_state is not None)
        pushing = asyncio.create_task(asyncio.to_thread(push, release, dev, Broker(f"mqtt://127.0.0.1:{mosquitto.port}"),
                                                        ack_timeout=20, wait_status=60, say=said.append))
        await _until(lambda: n.tasks[1].done(), 60)  # the link resets the node after the install's ack
        reset = n.tasks[1].exception()
        n.stop()
        proc = _boot(board)
        try:
            out = await pushing
            # the node ends its trial once the broker acknowledged that status: a moment after push saw it
            await _until(lambda: _journal(board)["state"] == "ok", 20)
        finally:
            proc.terminate()
            log = proc.communicate(timeout=20)[0]
        return out, reset, log

    out, reset, log = asyncio.run(go())
    assert type(reset).__name__ == "Reboot", log
    n_cmds = len(list(release.commands()))
    assert (out.installed, out.fw, out.commands, out.resumed) == (True, "2.0.0", n_cmds, 0), (out, log)
    assert said == [f"{dev}: {i}/{n_cmds}" for i in range(1, n_cmds + 1)]
    j = _journal(board)
    assert (j["cur"], j["state"], j["seq"], j["seen"], j["fw"], j["prev"]) == ("a", "ok", 1000, 1000, "2.0.0", "")
    for path, data in zip(release.paths, release.files, strict=True):
        assert Path(board.path("/fw/a/knode/" + path.removeprefix("/lib/knode/"))).read_bytes() == data


def test_push_starts_over_when_the_node_lost_the_update_to_a_reboot(mosquitto, make_board, key) -> None:
    """The node loses power after 5 of the commands: the update in RAM is gone; push starts again and finishes."""
    dev = "0a7a0005"
    board = make_board(node_config(device=dev, port=mosquitto.port), speedup=SPEEDUP)
    Path(board.path("/release.pub")).write_bytes(rel.point(key))
    release = rel.build(tiny_files("r", 5000), 77, "7.7", key)
    n_cmds = len(list(release.commands()))
    cut, back = threading.Event(), threading.Event()

    def say(m: str) -> None:
        if m == f"{dev}: 6/{n_cmds}" and not cut.is_set():
            cut.set()
            assert back.wait(30)

    async def go() -> object:
        n = node.Node(board)
        n.start()
        await _until(lambda: n.client is not None and n.client.connected and n.last_state is not None)
        pushing = asyncio.create_task(asyncio.to_thread(push, release, dev, Broker(f"mqtt://127.0.0.1:{mosquitto.port}"),
                                                        ack_timeout=20, wait_status=0, say=say))
        await _until(cut.is_set)
        n.stop()  # power cut: RAM is gone, flash stays
        n = node.Node(board)
        n.start()
        await _until(lambda: n.client is not None and n.client.connected and n.last_state is not None)
        back.set()
        out = await pushing
        await _until(lambda: n.tasks[1].done(), 20)
        n.stop()
        return out

    out = asyncio.run(go())
    assert (out.commands, out.resumed) == (5 + 1 + n_cmds, 1)  # 5 acked, 1 refused ("no update"), then all
    j = _journal(board)
    assert (j["cur"], j["state"], j["seq"]) == ("a", "trial", 77)


def test_an_update_with_no_status_within_its_trial_is_rolled_back(make_board, key) -> None:
    """Nothing raises, the broker is never reached: after TRIAL_S main.py rolls back and resets."""
    from kerbside.devstack import free_port

    board = make_board(node_config(device="0a7a0002", port=free_port()), speedup=SPEEDUP)
    Path(board.path("/release.pub")).write_bytes(rel.point(key))
    n = node.Node.__new__(node.Node)  # only what ota.command uses
    n.board, n.reboot_requested = board, False
    release = rel.build(real_files("2.0.1"), 1001, "2.0.1", key)
    assert all(ota.command(n, args) is None for args in release.commands()) and n.reboot_requested
    proc = _boot(board, trial_s=30)
    log = proc.communicate(timeout=60)[0]
    assert log.splitlines()[-1] == "KS_RESET", log
    j = _journal(board)
    assert (j["cur"], j["state"], j["seq"], j["fw"], j["seen"]) == ("", "ok", 0, "", 0)
    assert j["note"] == "rolled back 2.0.1 (1001): RuntimeError: no status within 30 s"


def test_a_shadowed_update_is_detected_and_rolled_back_not_reported(make_board, key) -> None:
    """A frozen knode, or one imported before main.py chose, would run instead of the update: refuse to trust it."""
    board = make_board(node_config(device="0a7a0003"), speedup=SPEEDUP)
    Path(board.path("/release.pub")).write_bytes(rel.point(key))
    n = node.Node.__new__(node.Node)
    n.board, n.reboot_requested = board, False
    for args in rel.build(tiny_files("t"), 7, "7.0", key).commands():
        assert ota.command(n, args) is None
    boot = _main()
    before = list(sys.path)
    try:
        with pytest.raises(Exception) as reset:
            boot["start"](board.root, board)  # this interpreter already imported knode from firmware/
    finally:
        sys.path[:] = before
    assert type(reset.value).__name__ == "Reboot"
    j = _journal(board)
    assert (j["cur"], j["state"]) == ("", "ok")
    why = f"ImportError: knode.node comes from {node.__file__}, not the update in {board.root}/fw/a"
    assert j["note"] == "rolled back 7.0 (7): " + why[:160]  # main.py keeps 160 characters of the reason


class Operator:
    """The operator's MQTT client: sends commands, collects acks and statuses of one node."""

    def __init__(self, port: int, dev: str) -> None:
        self.dev = dev
        self.acks: queue.Queue[dict] = queue.Queue()
        self.status: queue.Queue[dict] = queue.Queue()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        ready: queue.Queue[bool] = queue.Queue()
        self.c.on_subscribe = lambda *a: ready.put(True)
        self.c.on_message = lambda _c, _u, m: (self.acks if m.topic.endswith("/ack") else self.status).put(
            cbor2.loads(m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.subscribe([(f"kerbside/v1/{dev}/ack", 1), (f"kerbside/v1/{dev}/status", 1)])
        self.c.loop_start()
        ready.get(timeout=10)

    def send(self, cmd: dict) -> dict:
        self.c.publish(f"kerbside/v1/{self.dev}/cmd", cbor2.dumps(cmd), qos=1)
        while True:
            ack = self.acks.get(timeout=20)
            if ack["cmd"] == cmd["cmd"]:
                return ack

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_safe_mode_keeps_the_link_when_the_application_cannot_import_and_a_signed_update_fixes_it(
        mosquitto, make_board, key, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = "0a7a0004"
    board = make_board(node_config(device=dev, port=mosquitto.port), speedup=SPEEDUP)
    Path(board.path("/release.pub")).write_bytes(rel.point(key))
    # knode.node cannot be imported (a broken module on flash, say): main.py must not boot-loop
    monkeypatch.delattr(knode, "node", raising=False)
    monkeypatch.setitem(sys.modules, "knode.node", None)
    monkeypatch.setattr(safemode, "SAFE_S", 3600)
    op = Operator(mosquitto.port, dev)
    boot = _main()
    ended: list[BaseException] = []

    def run() -> None:
        try:
            boot["start"](board.root, board)
        except BaseException as e:  # the simulator's reset ends the thread
            ended.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        status = {"online": False}
        while not (status.get("online") and str(status.get("fw", "")).startswith("SAFE")):
            status = op.status.get(timeout=20)
        assert status["fw"] == "SAFE"  # the provisioned firmware: no release number to name
        # the collector stores it like any status (fw shows SAFE; the extra `safe` key is ignored)
        stored = decode(f"kerbside/v1/{dev}/status", cbor2.dumps(status), time.time())
        assert stored.fields["fw"] == "SAFE" and stored.fields["online"] is True
        assert status["safe"] == "ModuleNotFoundError: import of knode.node halted; None in sys.modules"
        assert status["id"] == bytes.fromhex(dev) and status["kit"] == 1 and status["cfg"] == 1
        assert op.send({"v": 1, "cmd": 1, "op": "status"})["ok"] is True
        assert op.status.get(timeout=20)["fw"] == status["fw"]  # status on demand works in safe mode
        unsigned = op.send(ota_cmd(2, {"manifest": rel.manifest(5, "x", tiny_files("x"))}))
        assert unsigned["ok"] is False and unsigned["err"] == "ota: manifest and sig must be bytes"
        out = push(rel.build(tiny_files("fix"), 5, "fix", key), dev, Broker(f"mqtt://127.0.0.1:{mosquitto.port}"),
                   ack_timeout=20, wait_status=0)
        assert out.commands == 1 + 5 * 2  # the manifest, then five files of two chunks each
        t.join(timeout=30)
    finally:
        op.close()
    assert not t.is_alive() and [type(e).__name__ for e in ended] == ["Reboot"]
    j = _journal(board)
    assert (j["cur"], j["state"], j["fw"], j["seq"]) == ("a", "trial", "fix", 5)
