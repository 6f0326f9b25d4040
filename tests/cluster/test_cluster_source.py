"""The collector's AMQP source on a real 3-node RabbitMQ cluster secured by `broker-config --engine rabbitmq --apply`.

Nodes publish over MQTT through different cluster nodes; two collectors consume the one quorum queue as competing
consumers and ack only after durability. Every reading is stored once in effect, status and acks are taken, a bad
message is dead-lettered, and `kerbside gaps scan` (the gap tracking of collectors that share a stream) finds none.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rabbit_helpers import INGEST, OPERATOR, QUEUE, Secured, secret_of, secure

from kerbside.devcluster import RabbitCluster
from kerbside.devstack import CollectorProcess, free_port, wait_for
from knode import wire

pytestmark = [pytest.mark.services, pytest.mark.cluster]

DEVICES = tuple(f"0c0c00{i:02x}" for i in range(1, 7))
MESSAGES = 40
PER_MESSAGE = 5
PERIOD = 60


@pytest.fixture(scope="module")
def secured(rabbit: RabbitCluster, tmp_path_factory: pytest.TempPathFactory) -> Secured:
    return secure(rabbit, tmp_path_factory.mktemp("secured"), DEVICES)


def test_broker_config_renders_and_applies_the_accounts_permissions_and_queue(secured: Secured) -> None:
    d = secured.dir
    definitions = json.loads((d / "definitions.json").read_text())
    assert (d / "definitions.json").stat().st_mode & 0o007 == 0  # password hashes: not world-readable
    users = {u["name"] for u in definitions["users"]}
    assert users == {*DEVICES, *INGEST, OPERATOR}
    conf = (d / "rabbitmq.conf").read_text()
    for name in (n.name for n in secured.cluster.nodes):
        assert f"= {name}\n" in conf
    assert "mqtt.durable_queue_type = quorum" in conf and "max_message_size = 16389" in conf
    # what the cluster holds now: the accounts (guest deleted), the quorum queue on all three nodes, its bindings
    ctl = secured.cluster.ctl
    node = secured.cluster.nodes[0]
    listed = {line.split("\t")[0] for line in ctl(node, "list_users", "--no-table-headers").splitlines() if line}
    assert listed == users
    assert "deleted guest" in secured.applied_output
    q = ctl(node, "list_queues", "name", "type", "members", "--no-table-headers")
    (line,) = [x for x in q.splitlines() if x.startswith(QUEUE + "\t")]
    assert "\tquorum\t" in line and all(n.name in line for n in secured.cluster.nodes)
    bindings = ctl(node, "list_bindings", "source_name", "destination_name", "routing_key", "--no-table-headers")
    assert {tuple(x.split("\t")) for x in bindings.splitlines() if x.startswith("amq.topic")} == {
        ("amq.topic", QUEUE, f"kerbside.v1.*.{k}") for k in ("readings", "status", "ack")}
    # a second run changes nothing that matters and deletes nothing
    assert "deleted" not in secured.apply()


def _readings(device: str, k: int, t_start: int) -> bytes:
    dev = bytes.fromhex(device)
    rows = [(6, [40 + k % 9, 80, 150, 120, 600, 10100]) for _ in range(PER_MESSAGE)]
    seq = k * PER_MESSAGE
    return wire.encode_readings(dev, seq, 1, True, wire.KIT_AIR, t_start + seq * PERIOD, PERIOD, 6, rows)


def test_two_collectors_compete_for_the_queue_and_store_everything_once(secured: Secured, influxd, influx,  # type: ignore[no-untyped-def]
                                                                        tmp_path: Path) -> None:
    from prov_helpers import connect

    secured.purge()
    collectors = [CollectorProcess(name, tmp_path / name, free_port(),
                                   settings=secured.collector_settings(name, influxd.url, influx.db, tmp_path))
                  for name in INGEST[:2]]
    nodes = []
    try:
        for c in collectors:
            c.start()
        t_start = int(time.time()) - MESSAGES * PER_MESSAGE * PERIOD
        # each node through its own broker node, as a load balancer would spread them
        for i, dev in enumerate(DEVICES):
            nodes.append(connect(secured.cluster.nodes[i % 3].mqtt_port, dev, secret_of(dev), client_id=dev, clean=False))
        infos = []
        for k in range(MESSAGES):
            for node, dev in zip(nodes, DEVICES, strict=True):
                infos.append(node.client.publish(wire.topic(dev, "readings"), _readings(dev, k, t_start), qos=1))
        for node, dev in zip(nodes, DEVICES, strict=True):
            status = wire.encode_status({"v": 1, "id": bytes.fromhex(dev), "online": True, "t": t_start, "synced": True})
            infos.append(node.client.publish(wire.topic(dev, "status"), status, qos=1, retain=True))
        ack = wire.encode_status({"v": 1, "id": bytes.fromhex(DEVICES[0]), "cmd": 7, "ok": True})
        infos.append(nodes[0].client.publish(wire.topic(DEVICES[0], "ack"), ack, qos=1))
        infos.append(nodes[1].client.publish(wire.topic(DEVICES[1], "readings"), b"\xff not cbor", qos=1))
        for info in infos:
            info.wait_for_publish(30)
        assert all(info.is_published() for info in infos)  # PUBACK: in the quorum queue, on a majority

        expected = len(DEVICES) * MESSAGES * PER_MESSAGE

        def stored() -> int:
            series = influx.query('SELECT count("pm25") FROM "air"')
            return series[0]["values"][0][1] if series else 0

        def taken() -> float:
            return sum((c.metrics() or {}).get("kerbside_messages_total", 0.0) for c in collectors)

        wait_for(lambda: stored() == expected and taken() == len(infos), "every message taken and stored", 90)
        per_device = influx.query('SELECT count("seq"), min("seq"), max("seq") FROM "air" GROUP BY "device"')
        assert sorted((s["tags"]["device"], *s["values"][0][1:]) for s in per_device) == [
            (dev, MESSAGES * PER_MESSAGE, 0, MESSAGES * PER_MESSAGE - 1) for dev in DEVICES]
        shares = [(c.metrics() or {}).get('kerbside_messages_total{kind="readings"}', 0.0) for c in collectors]
        assert all(s > 0 for s in shares) and sum(shares) == len(DEVICES) * MESSAGES + 1, shares
        assert len(influx.query('SELECT * FROM "status"')[0]["values"]) == len(DEVICES)
        # each status is stored by one collector, but both fleet views know every node (their private status queues)
        wait_for(lambda: [(c.metrics() or {}).get("kerbside_devices_online") for c in collectors] == [len(DEVICES)] * 2,
                 "both collectors see every node online", 30)
        assert len(influx.query('SELECT * FROM "ack"')[0]["values"]) == 1
        assert sum((c.metrics() or {}).get("kerbside_rejected_total", 0.0) for c in collectors) == 1
        wait_for(lambda: secured.cluster.queue_depth(QUEUE) == (0, 0), "the queue emptied (every delivery acked)", 30)
        # collectors sharing the stream leave gap records to `kerbside gaps scan`, which finds none
        assert influx.query('SELECT count("missing") FROM "kerbside_gaps"') == []
        scan = subprocess.run([sys.executable, "-m", "kerbside", "gaps", "scan", "--influx", influxd.url, "--db",
                               influx.db, "--since", "2d"], capture_output=True, text=True, timeout=60)
        assert scan.returncode == 0 and scan.stderr.startswith("0 gap records written"), scan.stderr
    finally:
        for n in nodes:
            n.close()
        for c in collectors:
            c.stop()
