"""Signed updates in the MicroPython VM: the real firmware refuses, installs, reboots into and rolls back releases.

Each VM run is one boot of a node: the provisioned firmware in /lib/knode, and
whatever the previous boot left on flash (the VM prints its files at the end,
the next run starts with them). Commands go through knode.commands.handle from
raw CBOR payloads, as they arrive from the broker, and the acks come back as
the node publishes them. Releases are the real firmware compiled with mpy-cross,
signed by the release tool's code with a key made for this test module.
"""

from __future__ import annotations

import binascii
import json
import re
import shutil
from pathlib import Path

import cbor2
import pytest

from kerbside.core import release as rel
from kerbside.provisioning.bundle import build
from kerbside.provisioning.release import firmware_version, release_files

from .ota_helpers import FIRMWARE, MAIN, ota_cmd, tiny_files

pytestmark = [pytest.mark.mpy, pytest.mark.services]

DEV = "c0ffee01"
CONFIG = {"v": 1, "device": DEV, "kit": "air", "wifi": [{"ssid": "x", "psk": "secret-psk"}],
          "mqtt": {"host": "127.0.0.1", "port": 1883, "tls": False, "password": "pw"}}

# What each boot runs first: a node object for commands.handle, a client that records acks, a flash dump.
PRELUDE = """
import asyncio, binascii, gc, json, os, sys
# nothing imports knode here: a boot must import it only after main.py chose the firmware

class Client:
    # acks go to a file, outside the GC heap, so that measuring the heap does not measure them
    async def publish(self, topic, payload, qos=1, retain=False):
        with open("/acks.txt", "a") as f:
            f.write(binascii.hexlify(payload).decode() + " ")

def acks():
    try:
        with open("/acks.txt") as f:
            out = f.read().split()
    except OSError:
        out = []
    try:
        os.remove("/acks.txt")
    except OSError:
        pass
    return out

class Node:
    def __init__(self):
        from knode import hal
        self.board = hal.Board()
        self.did = "DEVICE"
        self.dev = bytes.fromhex(self.did)
        self.cfg = {"cfg": 1}
        self.reboot_requested = False

def dump(p="/"):
    try:
        st = os.stat(p)
    except OSError:
        return
    if st[0] & 0x4000:
        if p in ("/lib", "/tmp", "/home", "/dev", "/proc"):
            return
        for n in os.listdir(p):
            dump((p if p != "/" else "") + "/" + n)
    else:
        with open(p, "rb") as f:
            print("KS_FILE " + p + " " + binascii.hexlify(f.read()).decode())

async def send_all(node, client, folder="/cmds"):
    from knode import commands
    live = []
    for name in sorted(os.listdir(folder)):
        with open(folder + "/" + name, "rb") as f:
            payload = f.read()
        await commands.handle(node, client, payload)
        payload = None
        await asyncio.sleep(0)
        gc.collect()
        live.append(gc.mem_alloc())
    return live
""".replace("DEVICE", DEV)


class Flash:
    """A node's flash between VM runs (boots): host copies of every file outside /lib."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.files: dict[str, bytes] = {}
        self.n = 0

    def put(self, path: str, data: bytes) -> None:
        self.files[path] = data

    def mapping(self) -> dict[str, Path]:
        self.n += 1
        out = {}
        for i, (path, data) in enumerate(sorted(self.files.items())):
            host = self.dir / f"boot{self.n}-{i}"
            host.write_bytes(data)
            out[path] = host
        return out

    def boot(self, micropython, code: str, heap: int = 256 * 1024, extra: dict[str, bytes] | None = None,
             ok: bool = True) -> tuple[list[dict], list[str], object]:
        """One boot: run code after PRELUDE, keep what it left on flash; returns (acks, KS_ lines, result)."""
        for path, data in (extra or {}).items():
            self.files[path] = data
        script = PRELUDE + code + "\nprint('KS_ACKS ' + json.dumps(acks()))\ndump()\n"
        result = micropython.run(script, heap=heap, files=self.mapping())
        if ok:
            result.check()
        self.files = {}
        acks: list[dict] = []
        lines = []
        for ln in result.stdout.splitlines():
            if ln.startswith("KS_FILE "):
                _, path, data = ln.split(" ", 2)
                self.files[path] = binascii.unhexlify(data)
            elif ln.startswith("KS_ACKS "):
                acks = [cbor2.loads(bytes.fromhex(a)) for a in json.loads(ln[8:])]
            elif ln.startswith("KS_"):
                lines.append(ln)
        for path in [p for p in self.files if p.startswith("/cmds/")]:
            del self.files[path]  # the commands were the broker's, not the node's
        return acks, lines, result


def commands_of(release: rel.Release, first_id: int) -> dict[str, bytes]:
    return {f"/cmds/{i:04d}": cbor2.dumps(ota_cmd(first_id + i, args)) for i, args in enumerate(release.commands())}


@pytest.fixture(scope="module")
def key():
    return rel.new_key()


def _firmware(tmp: Path, fw: str, node_extra: str = "") -> list[tuple[str, bytes]]:
    """The real firmware, compiled with mpy-cross as `kerbside release sign` does, with FW = fw."""
    d = tmp / f"fw-{fw}"
    shutil.copytree(FIRMWARE, d, ignore=shutil.ignore_patterns("__pycache__"))
    node = d / "knode" / "node.py"
    node.write_text(re.sub(r'^FW = "[^"]*"', f'FW = "{fw}"', node.read_text(), count=1, flags=re.M) + node_extra)
    assert firmware_version(d) == fw
    return release_files(build(d))


@pytest.fixture(scope="module")
def releases(key, tmp_path_factory: pytest.TempPathFactory) -> dict[str, rel.Release]:
    tmp = tmp_path_factory.mktemp("releases")
    good = _firmware(tmp, "2.0.0")
    bad = _firmware(tmp, "3.0.0-bad", "\nraise RuntimeError('self-test: no I2C bus')\n")
    return {"good": rel.build(good, 100, "2.0.0", key), "bad": rel.build(bad, 200, "3.0.0-bad", key)}


def _fresh(tmp: Path, key) -> Flash:
    flash = Flash(tmp)
    flash.put("/release.pub", rel.point(key))
    flash.put("/config.json", json.dumps(CONFIG).encode())
    return flash


def test_unsigned_wrong_key_tampered_and_out_of_firmware_updates_are_refused(micropython, key, releases, tmp_path) -> None:
    good = releases["good"]
    wrong = rel.new_key()
    m = good.manifest
    s = int.from_bytes(good.sig[32:], "big")
    flipped = bytearray(m)
    flipped[len(m) // 2] ^= 0x01
    # rel.build refuses paths outside the firmware (it runs the node's check), so these are signed by hand
    raw = rel.manifest(101, "evil", [*tiny_files("x"), ("/config.json", b'{"device": "evil"}')])
    main_attack = rel.manifest(102, "evil", [*tiny_files("y"), ("/main.py", b"print('pwned')")])
    dotdot = rel.manifest(103, "evil", [*tiny_files("z"), ("/lib/knode/../../boot.py", b"import evil")])
    attempts = [
        {"manifest": m},                                                     # unsigned
        {"manifest": m, "sig": b""},                                         # empty signature
        {"manifest": m, "sig": rel.sign(wrong, m)},                          # another key
        {"manifest": bytes(flipped), "sig": good.sig},                       # one bit of the manifest changed
        {"manifest": m, "sig": good.sig[:32] + (rel.p256.N - s).to_bytes(32, "big")},  # high-S twin
        {"manifest": m, "sig": bytes(32) + good.sig[32:]},                   # r = 0
        {"manifest": m, "sig": good.sig[:32] + rel.p256.N.to_bytes(32, "big")},  # s = n
        {"manifest": raw, "sig": rel.sign(key, raw)},                        # signed, but aimed at /config.json
        {"manifest": main_attack, "sig": rel.sign(key, main_attack)},        # signed, aimed at /main.py
        {"manifest": dotdot, "sig": rel.sign(key, dotdot)},                  # signed, climbing out of the package
        {"path": "/config.json", "data": b"{}", "sha256": b"\0" * 32, "last": True},  # the old unsigned format
        {"seq": 100, "file": 0, "off": 0, "data": b"x"},                     # a chunk with no update started
    ]
    flash = _fresh(tmp_path, key)
    cmds = {f"/cmds/{i:04d}": cbor2.dumps(ota_cmd(500 + i, a)) for i, a in enumerate(attempts)}
    # a correct manifest, then a chunk whose bytes were changed in transit: refused when the file's hash is checked
    first = list(good.commands())[:2]
    bad_chunk = dict(first[1])
    bad_chunk["data"] = bytes(b ^ 0xFF for b in bad_chunk["data"][:10]) + bad_chunk["data"][10:]
    size0 = rel.cbor.loads(good.manifest)["files"][0][1]
    assert size0 <= rel.MAX_CHUNK, "the first file fits one chunk, so the bad chunk completes it"
    cmds["/cmds/0100"] = cbor2.dumps(ota_cmd(600, first[0]))
    cmds["/cmds/0101"] = cbor2.dumps(ota_cmd(601, bad_chunk))
    cmds["/cmds/0102"] = cbor2.dumps(ota_cmd(602, first[1]))  # the update was dropped with the bad chunk
    code = """
node = Node()
from knode import commands, ota
await asyncio.sleep(0)
gc.collect()
base = gc.mem_alloc()
live = await send_all(node, Client())
print("KS_REBOOT " + json.dumps(node.reboot_requested))
print("KS_MODS " + json.dumps(sorted(k for k in sys.modules if k.startswith("knode."))))
print("KS_LIVE " + json.dumps([base, live]))
"""
    acks, lines, _ = flash.boot(micropython, code, extra=cmds)
    base, live = json.loads(lines.pop()[len("KS_LIVE "):])
    mods = json.loads(lines.pop()[len("KS_MODS "):])
    # the receiving code (~11 KB with the verifier) is not kept between commands when no update is under way
    assert "knode.ota_receive" not in mods and "knode.p256" not in mods and "knode.ota" in mods
    print(f"live heap after each refused update: {live} (before the first: {base})")
    assert live[-1] - base < 6 * 1024  # what stays is mostly interned names (MicroPython never frees qstrs)
    errs = [a.get("err") for a in acks]
    assert [a["cmd"] for a in acks] == [*range(500, 512), 600, 601, 602]
    assert [a["ok"] for a in acks] == [False] * 12 + [True, False, False]
    assert errs[0] == "ota: manifest and sig must be bytes"
    assert errs[1:7] == ["ota: bad signature"] * 6
    assert errs[7] == "ota: '/config.json' is outside the firmware (/lib/knode/...)"
    assert errs[8] == "ota: '/main.py' is outside the firmware (/lib/knode/...)"
    assert errs[9] == "ota: bad file name '/lib/knode/../../boot.py'"
    assert errs[10] == "ota: args need a manifest and sig, or a chunk (seq, file, off, data)"
    assert errs[11] == "ota: no update in progress: send the manifest first"
    assert errs[13] == f"ota: {good.paths[0]}: sha256 mismatch"
    assert errs[14] == "ota: no update in progress: send the manifest first"
    assert lines == ["KS_REBOOT false"]
    # nothing the attempts sent reached flash: the config and key are as provisioned, no slot, no journal
    assert set(flash.files) == {"/release.pub", "/config.json"}
    assert json.loads(flash.files["/config.json"]) == CONFIG


def test_a_signed_release_installs_survives_reboots_and_is_not_replayed(micropython, key, releases, tmp_path) -> None:
    good = releases["good"]
    flash = _fresh(tmp_path, key)
    code = """
node = Node()
live = await send_all(node, Client())
print("KS_LIVE " + json.dumps(live))
print("KS_REBOOT " + json.dumps(node.reboot_requested))
"""
    acks, lines, _ = flash.boot(micropython, code, extra=commands_of(good, 1000))
    n = len(list(good.commands()))
    assert [a["ok"] for a in acks] == [True] * n and [a["cmd"] for a in acks] == list(range(1000, 1000 + n))
    live = json.loads(lines[0][len("KS_LIVE "):])
    assert lines[1] == "KS_REBOOT true"
    j = json.loads(flash.files["/ota.json"])
    assert (j["cur"], j["state"], j["boots"], j["seq"], j["fw"], j["prev"], j["seen"]) == ("a", "trial", 0, 100,
                                                                                         "2.0.0", "", 0)
    for path, data in zip(good.paths, good.files, strict=True):
        assert flash.files["/fw/a/knode/" + path.removeprefix("/lib/knode/")] == data
    # Streamed: the live heap between chunks does not grow with the firmware's size (~37 KB of .mpy).
    total = sum(len(f) for f in good.files)
    growth = max(live[1:]) - live[1]
    print(f"live heap between the {len(live)} commands of a {total}-byte install: {min(live)}..{max(live)} B")
    assert total > 30_000 and growth < 4096

    reboot = f"""
boot = {{"__name__": "kmain"}}
exec({MAIN.read_text()!r}, boot)
j = boot["choose"]("")
where = boot["slot_dir"]("", j)
sys.path.insert(0, where)
from knode import node as app, ota
print("KS_BOOT " + json.dumps([j.get("state"), where, app.FW, app.__file__, sys.path.index(where),
                               sys.path.index(".frozen")]))
"""
    # first boot of the release: on trial, imported from its slot ahead of .frozen and /lib
    healthy = "from knode import hal\nota.healthy(hal.Board())  # its first status got a PUBACK\n"
    _, lines, _ = flash.boot(micropython, reboot + healthy)
    assert json.loads(lines[0][len("KS_BOOT "):]) == ["trial", "/fw/a", "2.0.0", "/fw/a/knode/node.mpy", 0, 2]
    j = json.loads(flash.files["/ota.json"])
    assert (j["state"], j["boots"], j["seen"]) == ("ok", 0, 100)
    # the next boot: kept, not on trial; the same release sent again (a replay) changes nothing
    replay = reboot + "await send_all(Node(), Client())\n"
    acks, lines, _ = flash.boot(micropython, replay, extra=commands_of(good, 2000))
    assert json.loads(lines[0][len("KS_BOOT "):])[:3] == ["ok", "/fw/a", "2.0.0"]
    assert acks[0]["ok"] is False and acks[0]["err"] == "ota: release 100 is not newer than 100: refused (downgrade or replay)"
    assert json.loads(flash.files["/ota.json"]) == j


def test_a_release_that_fails_its_self_test_is_rolled_back(micropython, key, releases, tmp_path) -> None:
    """main.py as on the device: watchdog first, the import inside try, rollback, reset."""
    good, bad = releases["good"], releases["bad"]
    flash = _fresh(tmp_path, key)
    flash.boot(micropython, "node = Node()\nawait send_all(node, Client())\n", extra=commands_of(good, 1))
    flash.boot(micropython, f"""
boot = {{"__name__": "kmain"}}
exec({MAIN.read_text()!r}, boot)
j = boot["choose"]("")
from knode import hal, ota
ota.healthy(hal.Board())
""")
    acks, _, _ = flash.boot(micropython, "node = Node()\nawait send_all(node, Client())\n", extra=commands_of(bad, 5000))
    assert all(a["ok"] for a in acks)
    assert json.loads(flash.files["/ota.json"])["cur"] == "b"
    # A stand-in `machine` (the VM has none) records what main.py does, in order.
    machine = b"""
EVENTS = []
class WDT:
    def __init__(self, timeout):
        EVENTS.append("wdt %d" % timeout)
    def feed(self):
        pass
def reset():
    EVENTS.append("reset")
    raise SystemExit("reset")
"""
    boot = f"""
import builtins
real_import = builtins.__import__
def watch(name, *a):
    if name == "knode" and a and a[2] and "node" in a[2]:
        import machine
        machine.EVENTS.append("import knode.node")
    return real_import(name, *a)
builtins.__import__ = watch
try:
    exec({MAIN.read_text()!r}, {{"__name__": "__main__"}})
except SystemExit as e:
    print("KS_EXIT " + str(e))
builtins.__import__ = real_import
import machine
print("KS_EVENTS " + json.dumps(machine.EVENTS))
"""
    _, lines, result = flash.boot(micropython, boot, extra={"/lib/machine.py": machine})
    assert lines[0] == "KS_EXIT reset"
    assert json.loads(lines[1][len("KS_EVENTS "):]) == ["wdt 120000", "import knode.node", "reset"]
    assert "self-test: no I2C bus" in result.stdout  # main.py logged why
    j = json.loads(flash.files["/ota.json"])
    assert (j["cur"], j["state"], j["fw"], j["seq"], j["seen"]) == ("a", "ok", "2.0.0", 100, 100)
    assert j["note"] == "rolled back 3.0.0-bad (200): RuntimeError: self-test: no I2C bus"
    # the boot after the rollback runs the release that was healthy before
    assert "/lib/machine.py" not in flash.files  # /lib is the provisioned firmware's, not carried between boots
    _, lines, _ = flash.boot(micropython, f"""
boot = {{"__name__": "kmain"}}
exec({MAIN.read_text()!r}, boot)
j = boot["choose"]("")
sys.path.insert(0, boot["slot_dir"]("", j))
from knode import node as app
print("KS_FW " + app.FW)
""")
    assert lines == ["KS_FW 2.0.0"]


def test_a_hang_on_trial_is_rolled_back_after_its_boots(micropython, key, releases, tmp_path) -> None:
    """No exception, no status: the watchdog resets the node; after BOOTS boots main.py rolls it back."""
    flash = _fresh(tmp_path, key)
    flash.boot(micropython, "await send_all(Node(), Client())\n", extra=commands_of(releases["good"], 1))
    choose = f"""
boot = {{"__name__": "kmain"}}
exec({MAIN.read_text()!r}, boot)
j = boot["choose"]("")
print("KS_J " + json.dumps([j["cur"], j["state"], j.get("boots"), j.get("note", "")]))
"""
    seen = [flash.boot(micropython, choose)[1][0] for _ in range(3)]
    assert [json.loads(s[5:]) for s in seen] == [["a", "trial", 1, ""], ["a", "trial", 2, ""],
                                                 ["", "ok", 0, "rolled back 2.0.0 (100): no status in 2 boots"]]
