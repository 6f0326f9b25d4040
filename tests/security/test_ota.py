"""Security review, `ota` row: a credential that may send commands cannot run code on a node.

Against a real Mosquitto configured as `kerbside broker-config` renders it
(password file, ACL), a node (the real firmware on a simulated board) and an
attacker holding the credential that may publish to `kerbside/v1/+/cmd`. Every
attempt to get code or a file onto the node is refused by the node itself,
because only the city's release key makes an update acceptable: the legacy
unsigned form aimed at /config.json, an unsigned manifest, one signed with the
attacker's own key, a genuine old release replayed to downgrade, a manifest the
city key signed by mistake that names /config.json, and a genuine release whose
bytes were changed in transit. Then: nothing was lost (the flash is byte for
byte as before, the node answers, every reading it takes still arrives), and a
genuine new release still installs.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import json
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cbor2
import paho.mqtt.client as paho
import pytest

from kerbside.core import release as rel
from kerbside.core.registry import Device, Registry
from kerbside.core.settings import BrokerConfig
from kerbside.devstack import LOOPBACK, Mosquitto, free_port
from kerbside.provisioning import broker
from kerbside.provisioning.broker_dir import BrokerDir, account_password, write_all
from kerbside.provisioning.identity import new_secret
from kerbside.provisioning.passwd import hash_password
from kerbside.provisioning.release import Broker, push
from kerbside.simulator.city import Site
from kerbside.simulator.clock import VirtualClock
from kerbside.simulator.hardware import SimBoard
from knode import node, ota_receive

pytestmark = pytest.mark.services
DEV = "5ec0a7a1"
PACKAGE = "/lib/knode/"


@dataclass
class CityBroker:
    mosquitto: Mosquitto
    node_port: int
    """The nodes' listener with the rendered passwd and ACL (plain TCP here: the CPython board's TLS is not what
    this test is about; tests/security/test_sec_*.py attack the TLS listener itself)."""
    internal_port: int
    """The internal listener (collectors' ingest accounts and the operator), as rendered."""
    node_secret: str
    reader: tuple[str, str]
    """A collector's ingest account: reads the readings."""
    commander: tuple[str, str]
    """The operator account, the only one the rendered ACL lets write kerbside/v1/+/cmd: the attacker holds it."""


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CityBroker]:
    root = tmp_path_factory.mktemp("city-broker")
    registry = Registry(root / "registry.json")
    secret = new_secret()
    with registry.edit() as devices:
        devices[DEV] = Device(id=DEV, kit="air", site="pole 7", zone="lez", password_hash=hash_password(secret))
    d = BrokerDir(root / "broker")
    settings = BrokerConfig(dir=str(d.root), hosts=[LOOPBACK, "localhost"], state_dir=str(root / "state"),
                            system_user=getpass.getuser())
    write_all(d, registry.load(), settings)
    node_port, internal_port = free_port(), free_port()
    f = d.files
    extra = (broker.listener(node_port, LOOPBACK, f.password_file, f.acl_file)
             + broker.listener(internal_port, LOOPBACK, f.internal_password_file, f.internal_acl_file))
    # the dev stack's own listener (anonymous off, no password file) admits nobody: clients use the two above
    mosq = Mosquitto("mosquitto", root / "state", free_port(), extra=extra, anonymous=False).start()
    yield CityBroker(mosq, node_port, internal_port, secret,
                     (broker.INGEST_USER, account_password(d, broker.INGEST_USER)),
                     (broker.OPERATOR_USER, account_password(d, broker.OPERATOR_USER)))
    mosq.stop()


class Attacker:
    """Paho clients: the command credential (sends commands, sees acks and statuses) and a collector's ingest
    account beside it, which sees the node's readings (the operator may not read them)."""

    def __init__(self, port: int, user: str, password: str, reader: tuple[str, str]) -> None:
        self.acks: queue.Queue[dict] = queue.Queue()
        self.status: queue.Queue[dict] = queue.Queue()
        self.seqs: list[int] = []
        self.c = self._client(port, user, password, ("ack", "status"))
        self.r = self._client(port, *reader, ("readings",))

    def _client(self, port: int, user: str, password: str, kinds: tuple[str, ...]) -> paho.Client:
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=user, protocol=paho.MQTTv311)
        c.username_pw_set(user, password)
        ready: queue.Queue[object] = queue.Queue()
        c.on_connect = lambda _c, _u, _f, rc, _p: ready.put(rc)
        c.on_subscribe = lambda _c, _u, _m, rcs, _p: ready.put(rcs)
        c.on_message = self._message
        c.connect(LOOPBACK, port)
        c.loop_start()
        assert not ready.get(timeout=10).is_failure  # type: ignore[attr-defined]
        c.subscribe([(f"kerbside/v1/{DEV}/{k}", 1) for k in kinds])
        assert not any(r.is_failure for r in ready.get(timeout=10))  # type: ignore[attr-defined]
        return c

    def _message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        msg = cbor2.loads(m.payload)
        if m.topic.endswith("/readings"):
            self.seqs.extend(range(msg[2], msg[2] + len(msg) - 8))  # seq of the first reading, one per reading
        else:
            (self.acks if m.topic.endswith("/ack") else self.status).put(msg)

    def send(self, cmd_id: int, op: str, args: dict) -> dict:
        self.c.publish(f"kerbside/v1/{DEV}/cmd", cbor2.dumps({"v": 1, "cmd": cmd_id, "op": op, "args": args}), qos=1)
        while True:
            ack = self.acks.get(timeout=20)
            if ack["cmd"] == cmd_id:
                return ack

    def close(self) -> None:
        for c in (self.c, self.r):
            c.loop_stop()
            c.disconnect()


def _files(tag: str) -> list[tuple[str, bytes]]:
    return [(f"{PACKAGE}{m}.py", f"# {tag} {m}\n".encode() * 200) for m in ota_receive.NEEDED]


def _flash(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith("buf/")}


def test_the_command_credential_alone_cannot_run_code_on_a_node(city: CityBroker, tmp_path: Path) -> None:
    city_key, attacker_key = rel.new_key(), rel.new_key()
    root = tmp_path / "flash"
    board = SimBoard(1, root, VirtualClock(time.time(), 50.0), Site(48.2, 16.37, True), "air", 7)
    cfg = {"v": 1, "device": DEV, "kit": "air", "site": "pole 7", "zone": "lez", "wifi": [{"ssid": "c", "psk": "k"}],
           "mqtt": {"host": LOOPBACK, "port": city.node_port, "tls": False, "user": DEV,
                    "password": city.node_secret, "keepalive": 60},
           "ntp": ["ntp.city.example"], "period": 60, "sample": 10, "status_every": 300, "credential": 1, "cfg": 1,
           "cal": {}, "pins": {}}
    (root / "config.json").write_text(json.dumps(cfg))
    (root / "release.pub").write_bytes(rel.point(city_key))
    # the node already runs the city's release 200 (provisioned after it; the journal remembers it)
    (root / "ota.json").write_text(json.dumps({"cur": "", "prev": "", "state": "ok", "boots": 0, "seq": 0, "fw": "",
                                               "seen": 200, "note": ""}))
    before = _flash(root)

    old = rel.build(_files("old"), 100, "1.0.0", city_key)            # genuine, older than what the node runs
    evil_files = [*_files("evil"), ("/config.json", json.dumps({**cfg, "mqtt": {**cfg["mqtt"], "host": "evil"}}).encode())]
    mistake = rel.manifest(201, "evil", evil_files)                   # the city key signed a bad manifest by mistake
    own = rel.manifest(202, "evil", _files("evil"))
    genuine = rel.build(_files("new"), 300, "3.0.0", city_key)
    tampered = list(genuine.commands())[:3]  # the manifest and the two chunks of the first file
    tampered[1] = {**tampered[1], "data": tampered[1]["data"].replace(b"new", b"evl")}
    evil_config = b'{"device": "' + DEV.encode() + b'", "mqtt": {"host": "evil.example"}}'
    attempts = [
        ({"path": "/config.json", "data": evil_config, "sha256": hashlib.sha256(evil_config).digest(), "last": True},
         "ota: args need a manifest and sig, or a chunk (seq, file, off, data)"),
        ({"manifest": own}, "ota: manifest and sig must be bytes"),
        ({"manifest": own, "sig": rel.sign(attacker_key, own)}, "ota: bad signature"),
        ({"manifest": old.manifest, "sig": old.sig}, "ota: release 100 is not newer than 200: refused (downgrade or replay)"),
        ({"manifest": mistake, "sig": rel.sign(city_key, mistake)},
         "ota: '/config.json' is outside the firmware (/lib/knode/...)"),
        (tampered[0], None),
        (tampered[1], None),  # the file is checked when it is complete
        (tampered[2], f"ota: {PACKAGE}__init__.py: sha256 mismatch"),
    ]
    attacker = Attacker(city.internal_port, *city.commander, reader=city.reader)

    async def go() -> tuple[list[dict], dict, int, int, int]:
        n = node.Node(board)
        n.start()
        try:
            deadline = time.monotonic() + 20
            while not (n.client is not None and n.client.connected and n.last_state is not None and attacker.seqs):
                assert time.monotonic() < deadline, "the node never connected and sent a reading"
                await asyncio.sleep(0.01)
            acks = [await asyncio.to_thread(attacker.send, 10 + i, "ota", args) for i, (args, _) in enumerate(attempts)]
            status_ack = await asyncio.to_thread(attacker.send, 99, "status", {})
            after = max(attacker.seqs)
            deadline = time.monotonic() + 20
            while max(attacker.seqs) < after + 2:  # readings keep coming after the attacks
                assert time.monotonic() < deadline, "readings stopped"
                await asyncio.sleep(0.01)
            n.stop_sampling()
            deadline = time.monotonic() + 20
            while len(n.store) or max(attacker.seqs) < n.store.next_seq - 1:
                assert time.monotonic() < deadline, "the backlog never drained"
                await asyncio.sleep(0.01)
            flash_after_attacks = _flash(root)
            # a genuine new release, sent the same way, still installs: the attacks wedged nothing
            out = await asyncio.to_thread(push, genuine, DEV, Broker(f"mqtt://{LOOPBACK}:{city.internal_port}",
                                                                     *city.commander), ack_timeout=20, wait_status=0)
            deadline = time.monotonic() + 20
            while not n.tasks[1].done():
                assert time.monotonic() < deadline, "the node did not reset into the update"
                await asyncio.sleep(0.01)
            return acks, flash_after_attacks, status_ack["ok"], n.store.drops, out.commands
        finally:
            n.stop()

    try:
        acks, flash_after_attacks, status_ok, drops, pushed = asyncio.run(go())
    finally:
        attacker.close()
    for (args, err), ack in zip(attempts, acks, strict=True):
        assert ack["err" if err else "ok"] == (err if err else True), (args.keys(), ack)
    # nothing lost or changed: the flash is byte for byte what it was (the tampered transfer was wiped) ...
    assert flash_after_attacks == before
    # ... the node answered, and every reading it took arrived, in order, none dropped
    assert status_ok is True and drops == 0
    assert attacker.seqs == list(range(attacker.seqs[0], attacker.seqs[-1] + 1))
    # and the genuine release went in as the city signed it, on trial until its first status
    assert pushed == len(list(genuine.commands()))
    j = json.loads((root / "ota.json").read_text())
    assert (j["cur"], j["state"], j["seq"], j["fw"], j["seen"]) == ("a", "trial", 300, "3.0.0", 200)
    assert (root / "config.json").read_bytes() == before["config.json"]
