"""A node with a list of brokers moves to the next when its broker goes away, and resends what was not PUBACKed.

The whole node in the MicroPython VM (tests/mpy), two broker addresses: the first a relay to the real mosquitto
that dies mid-run (every connection cut, new ones refused, as when a cluster node is killed), the second the
broker itself. The node fails over with its usual backoff and every reading it took reaches the broker; the
one in flight when the first broker died is sent again (a duplicate at most, never a loss).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from kerbside.collector.decode import decode
from kerbside.devstack import wait_for
from kerbside.simulator import expected as expect
from kerbside.simulator.proxy import Relay
from mpy import vmrun

pytestmark = [pytest.mark.services, pytest.mark.mpy]

US = 1_000_000
PERIOD = 60
DEVICE = "0fa11000"


class DyingBroker:
    """A relay to the real broker on a thread of its own; die() cuts every connection and refuses new ones."""

    def __init__(self, port: int) -> None:
        self.down = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.relay = asyncio.run_coroutine_threadsafe(Relay("127.0.0.1", port, lambda: self.down).start(), self.loop).result(10)

    def die(self) -> None:
        self.down = True
        self.loop.call_soon_threadsafe(self.relay.cut)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.relay.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_the_node_fails_over_to_the_next_broker_and_loses_nothing(micropython: object, mosquitto,  # type: ignore[no-untyped-def]
                                                                 tmp_path: Path) -> None:
    firmware = vmrun.build(tmp_path / "vm-build")
    seqs: list[int] = []
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="failover-sub", clean_session=False,
                      protocol=paho.MQTTv311)

    def on_message(c: object, u: object, m: paho.MQTTMessage) -> None:
        d = decode(m.topic, m.payload, time.time())
        seqs.extend(range(d.seq, d.seq + d.count))

    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe(f"kerbside/v1/{DEVICE}/readings", 1)
    sub.loop_start()
    assert subscribed.wait(10)
    first = DyingBroker(mosquitto.port)
    try:
        cfg = {"v": 1, "device": DEVICE, "kit": "air", "site": "vm-failover", "zone": "lez",
               "wifi": [{"ssid": "city-iot", "psk": "simulated"}],
               "mqtt": {"host": "127.0.0.1", "port": first.relay.port, "tls": False, "keepalive": 60, "timeout": 2,
                        "brokers": [["127.0.0.1", first.relay.port], ["127.0.0.1", mosquitto.port]]},
               "period": PERIOD, "sample": 30, "status_every": 300, "cfg": 1}
        node = vmrun.VMNode(firmware, tmp_path / "flash", "air", cfg, tmp_path / "work")
        start = (int(time.time()) // 3600 - 2) * 3600 * US
        on = expect.first_power_on(start, PERIOD)
        end = start + 40 * 60 * US
        proc = node.start(on, end, 100, drain_s=20)
        wait_for(lambda: len(seqs) >= 8, "readings through the first broker", 120)
        through_first = len(seqs)
        first.die()
        boot = node.wait(proc, timeout=300)
    finally:
        sub.loop_stop()
        sub.disconnect()
        first.close()
    r = boot.result
    assert r["reason"] == "drained" and r["buffered"] == 0, r
    assert r["broker"] == 1, "the node ended on the second broker"
    assert len(seqs) > through_first, "readings kept coming after the first broker died"
    assert sorted(set(seqs)) == list(range(r["produced"])), "every reading the node took reached the broker"
    assert len(seqs) - len(set(seqs)) <= 1, "at most the one reading in flight was sent twice"
