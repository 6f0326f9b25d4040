"""Broker limits from the wire contract: an oversize message is refused at the broker, and the queues are bounded.

Before: a node could publish ten 6.7 MB messages, the broker relayed them and grew from 10 to 82 MB. The rendered
max_packet_size (the largest packet anyone has a reason to send) makes mosquitto disconnect the sender as soon as
it reads the packet's length: nothing is stored, queued or relayed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prov_helpers import WAIT, RenderedBroker
from sec_helpers import A, B, node_pub, topic

from kerbside.core import contract
from kerbside.provisioning import broker
from knode import wire

BIG = 6_700_000
"""The size of the messages the reviewer sent."""


def _packet(topic_name: str, payload: int) -> int:
    """Bytes of an MQTT 3.1.1 QoS1 PUBLISH: fixed header, remaining length, topic, packet id, payload."""
    remaining = 2 + len(topic_name) + 2 + payload
    return 1 + (1 if remaining < 128 else 2 if remaining < 16384 else 3) + remaining


def test_the_size_limit_passes_every_legitimate_message_and_nothing_much_bigger() -> None:
    biggest_message = _packet(wire.topic("0e0e0e01", "readings"), contract.MAX_PAYLOAD)
    biggest_command = 1 + 3 + contract.MAX_TO_NODE  # what a node's MQTT client accepts
    assert broker.MAX_PACKET >= max(biggest_message, biggest_command)
    assert broker.MAX_PACKET <= 2 * max(biggest_message, biggest_command) < 1_000_000
    # a full message of 240 readings (the most a node sends at once) is far inside the contract's limit
    worst = [(3600, [10000] * 8 + [3000] * 2)] * wire.MAX_READINGS
    full = wire.encode_readings(bytes(4), 2**32 - 1, 65535, True, wire.KIT_TRAFFIC, 2**32 - 1, 3600, 3600, worst)
    assert len(full) <= contract.MAX_PAYLOAD


def test_the_queue_byte_budget_holds_the_legitimate_backlog() -> None:
    """max_queued_bytes = messages x BYTES_PER_QUEUED: several times the mean of what nodes queue for the collector."""
    status = wire.encode_status({"v": 1, "id": "0e0e0e01", "online": True, "t": 2**32 - 1, "synced": True, "fw": "1.27.0-99",
                                 "kit": 2, "up": 2**32 - 1, "heap": 2**32 - 1, "rssi": -100, "buf": 2**32 - 1,
                                 "drop": 2**32 - 1, "boot": 65535, "seq": 2**32 - 1, "cfg": 2**32 - 1,
                                 "health": {"pm": "ok", "bme280": "ok", "no2": "fail", "co2": "ok", "radar": "ok"}})
    reading = wire.encode_readings(bytes(4), 2**32 - 1, 65535, True, wire.KIT_TRAFFIC, 2**32 - 1, 60, 6,
                                   [(6, [10000] * 8 + [3000] * 2)])
    assert len(status) < 200 and len(reading) < 64
    per_hour = (3600 // 60, 3600 // 300)  # what queue_limit() counts: readings and status messages per node-hour
    mean = (per_hour[0] * len(reading) + per_hour[1] * len(status)) / sum(per_hour)
    assert broker.BYTES_PER_QUEUED >= 3 * mean, mean
    assert broker.queue_bytes(broker.queue_limit(300)) == broker.queue_limit(300) * broker.BYTES_PER_QUEUED


@pytest.mark.services
def test_oversize_messages_are_refused_at_the_broker(rendered: RenderedBroker, tmp_path: Path) -> None:
    """Row 3: ten 6.7 MB messages and one of 1 MB from a node: each disconnects it, none is stored or relayed."""
    col = rendered.ingest()
    assert col.subscribe("kerbside/v1/+/readings") == [1]
    col.close()  # the collector is away: what reaches the broker queues in its session
    victim = rendered.node(A)
    for i in range(3):
        victim.publish(topic(A, "readings"), b"before %d" % i)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(BIG))
    rss_before = rendered.rss_kib()
    for _ in range(10):
        r = node_pub(rendered, B, topic(B, "readings"), file=big)
        assert r.returncode != 0, r.stderr  # disconnected mid-publish (the log below says why)
    attacker = rendered.node(B)
    info = attacker.client.publish(topic(B, "readings"), os.urandom(1_000_000), qos=1)
    assert attacker.disconnects.get(timeout=WAIT) is not None and not info.is_published()
    attacker.client.loop_stop()
    rss_after = rendered.rss_kib()
    print(f"broker RSS {rss_before} KiB before, {rss_after} KiB after 10 x {BIG} + 1 x 1000000 bytes refused")
    assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)  # it was +72 MiB when they were relayed
    assert rendered.log.read_text().count(f"Client {B} disconnected due to oversize packet") == 11
    victim.publish(topic(A, "readings"), b"after")
    victim.close()
    col = rendered.ingest()
    try:
        assert col.session_present
        assert col.take(4) == [(topic(A, "readings"), m) for m in (b"before 0", b"before 1", b"before 2", b"after")]
        assert col.received.empty()
    finally:
        col.close()
