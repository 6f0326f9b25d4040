"""knode.mqtt, the node's own asyncio MQTT 3.1.1 client, against the real mosquitto."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest

from knode import mqtt, wire

from .conftest import TCPBoard

# docs/wire/vectors.json "status_last_will"
LAST_WILL = bytes.fromhex("a36176016269644400c0ffee666f6e6c696e65f4")


class Sub:
    """A paho subscriber collecting (topic, payload, retain) into a queue."""

    def __init__(self, port: int, topic: str) -> None:
        self.q: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.c.on_message = lambda c, u, m: self.q.put((m.topic, m.payload, bool(m.retain)))
        subscribed: queue.Queue[bool] = queue.Queue()
        self.c.on_subscribe = lambda *a: subscribed.put(True)
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(topic, 1)
        self.c.loop_start()
        subscribed.get(timeout=10)

    def get(self, timeout: float = 10) -> tuple[str, bytes, bool]:
        return self.q.get(timeout=timeout)

    def empty_for(self, seconds: float) -> bool:
        try:
            self.q.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def sub(mosquitto) -> Iterator[callable]:
    made: list[Sub] = []

    def make(topic: str) -> Sub:
        s = Sub(mosquitto.port, topic)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _client(**kw: object) -> mqtt.MQTTClient:
    will = (wire.topic("00c0ffee", "status"), LAST_WILL, True)
    return mqtt.MQTTClient(TCPBoard(), kw.pop("client_id", "00c0ffee"), will=will, timeout=5, **kw)


@pytest.mark.services
def test_qos1_publish_returns_after_puback_and_arrives(mosquitto, sub) -> None:
    s = sub("kerbside/v1/0badcafe/readings")

    async def go() -> None:
        c = _client(client_id="0badcafe")
        await c.connect("127.0.0.1", mosquitto.port)
        for i in range(20):
            await c.publish("kerbside/v1/0badcafe/readings", bytes([i]) * 100, 1)
        assert c._waiting == {}  # every PUBACK matched its packet id
        await c.disconnect()

    asyncio.run(go())
    got = [s.get() for _ in range(20)]
    assert [p[1][0] for p in got] == list(range(20)) and all(len(p[1]) == 100 for p in got)


@pytest.mark.services
def test_last_will_is_published_retained_on_abrupt_disconnect(mosquitto, sub) -> None:
    async def go() -> None:
        c = _client()
        await c.connect("127.0.0.1", mosquitto.port)
        await c.publish(wire.topic("00c0ffee", "status"), b"\xa0", 1, True)  # an "online" status first
        await c.aclose()  # socket dropped without DISCONNECT: what a node losing power looks like

    s = sub("kerbside/v1/00c0ffee/status")
    asyncio.run(go())
    seen = []
    deadline = time.monotonic() + 10
    while LAST_WILL not in seen:
        seen.append(s.get(timeout=max(0.1, deadline - time.monotonic()))[1])
    assert b"\xa0" in seen  # the online status came first, then the broker's Last Will
    late = Sub(mosquitto.port, "kerbside/v1/00c0ffee/status")  # a collector starting later still sees it
    try:
        assert late.get() == ("kerbside/v1/00c0ffee/status", LAST_WILL, True)
    finally:
        late.close()


@pytest.mark.services
def test_clean_disconnect_sends_no_last_will(mosquitto, sub) -> None:
    s = sub("kerbside/v1/0c1ea000/status")

    async def go() -> None:
        will = (wire.topic("0c1ea000", "status"), b"\xf4", False)
        c = mqtt.MQTTClient(TCPBoard(), "0c1ea000", will=will, timeout=5)
        await c.connect("127.0.0.1", mosquitto.port)
        await c.disconnect()

    asyncio.run(go())
    assert s.empty_for(1.0)


@pytest.mark.services
def test_incoming_commands_reach_the_callback(mosquitto) -> None:
    got: list[tuple[str, bytes]] = []

    async def go() -> None:
        c = _client(client_id="c0dec0de", on_message=lambda t, p, pid: got.append((t, p)) is None)
        await c.connect("127.0.0.1", mosquitto.port)
        await c.subscribe("kerbside/v1/c0dec0de/cmd", 1)
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        pub.publish("kerbside/v1/c0dec0de/cmd", b"\xa1\x61v\x01", qos=1).wait_for_publish(5)
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.02)
        pub.loop_stop()
        pub.disconnect()
        await c.disconnect()

    asyncio.run(go())
    assert got == [("kerbside/v1/c0dec0de/cmd", b"\xa1\x61v\x01")]


async def _silent_broker(connack: bytes = b"\x20\x02\x00\x00") -> tuple[asyncio.Server, int]:
    """Answers CONNECT, then never acknowledges anything: a broker that hangs."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(1024)
        w.write(connack)
        await w.drain()
        while await r.read(1024):
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_puback_wait_is_bounded() -> None:
    async def go() -> float:
        server, port = await _silent_broker()
        c = mqtt.MQTTClient(TCPBoard(), "0000beef", timeout=0.3)
        await c.connect("127.0.0.1", port)
        t0 = time.monotonic()
        with pytest.raises(mqtt.MQTTError, match="no acknowledgement"):
            await c.publish("kerbside/v1/0000beef/readings", b"x", 1)
        elapsed = time.monotonic() - t0
        assert not c.connected  # the caller reconnects and resends; nothing is acked by mistake
        server.close()
        return elapsed

    assert asyncio.run(go()) < 5


def test_refused_connection_names_the_reason() -> None:
    async def go() -> None:
        server, port = await _silent_broker(b"\x20\x02\x00\x05")
        c = mqtt.MQTTClient(TCPBoard(), "0000beef", timeout=2)
        with pytest.raises(mqtt.MQTTError, match="not authorised"):
            await c.connect("127.0.0.1", port)
        assert not c.connected
        server.close()

    asyncio.run(go())


def test_packet_encoding_is_byte_exact() -> None:
    assert mqtt.publish_packet("a/b", b"xy", 1, True, 10) == bytearray(b"\x33\x09\x00\x03a/b\x00\x0axy")
    p = mqtt.connect_packet("id", "u", "pw", 60, ("w", b"!", True), False)
    assert p == bytearray(b"\x10\x1b\x00\x04MQTT\x04\xec\x00\x3c\x00\x02id\x00\x01w\x00\x01!\x00\x01u\x00\x02pw")
    big = mqtt._packet(0x30, b"z" * 200)
    assert big[:3] == bytearray(b"\x30\xc8\x01") and len(big) == 203
