"""knode.mqtt on MicroPython's stream semantics (tests/firmware/mpstream.py): no process, no broker.

Each test is one of issue 12's findings: concurrent writers corrupting the stream, a connect that
hangs inside the TLS handshake, sockets never closed, DUP on a resent QoS1 publish, a refused
subscription, keepalive 0.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from knode import mqtt

from .mpstream import MpBoard, packets


def _client(board: MpBoard, **kw: object) -> mqtt.MQTTClient:
    return mqtt.MQTTClient(board, "0000beef", timeout=kw.pop("timeout", 2), **kw)  # type: ignore[arg-type]


async def _answer_pubacks(board: MpBoard, stop: asyncio.Event) -> None:
    """The broker's side: a PUBACK for every QoS1 PUBLISH that has arrived whole."""
    seen = 0
    while not stop.is_set():
        w = board.wires[-1]
        try:
            got = packets(bytes(w.data))
        except (AssertionError, IndexError):
            got = []
        for p in got[seen:]:
            if p[0] >> 4 == 3 and p[0] & 0x06:
                n = 1
                while p[n] & 0x80:
                    n += 1
                tl = p[n + 1] << 8 | p[n + 2]
                pid = p[n + 3 + tl:n + 5 + tl]
                w.inbox += b"\x40\x02" + pid
        seen = max(seen, len(got))
        await asyncio.sleep(0.001)


def test_concurrent_publishes_under_back_pressure_keep_the_stream_intact() -> None:
    """Three writers (two publishers and a ping) on a socket that takes 64 bytes at a time:
    every byte on the wire belongs to exactly one packet, in one piece."""
    board = MpBoard(window=64)

    async def go() -> tuple[bytes, list[bytes]]:
        c = _client(board)
        await c.connect("broker", 1883)
        stop = asyncio.Event()
        acks = asyncio.create_task(_answer_pubacks(board, stop))
        sent = []

        async def pub(tag: int) -> None:
            for i in range(5):
                payload = bytes([tag]) * (300 + 37 * i)
                sent.append(payload)
                await c.publish("kerbside/v1/0000beef/readings", payload, 1)

        await asyncio.gather(pub(1), pub(2), c._send(bytes((mqtt.PINGREQ, 0))))
        stop.set()
        await acks
        await c.aclose()
        return bytes(board.wires[0].data), sent

    data, sent = asyncio.run(go())
    pk = packets(data)  # raises if bytes went out twice or out of place
    pubs = [p for p in pk if p[0] >> 4 == 3]
    assert sorted(p[-len(s):] for p, s in zip(sorted(pubs, key=len), sorted(sent, key=len), strict=True)) == sorted(sent)
    assert len(data) == sum(len(p) for p in pk), "nothing on the wire but whole packets"
    assert len(pubs) == 10 and sum(1 for p in pk if p[0] == mqtt.PINGREQ) == 1


def test_a_connect_stuck_in_the_handshake_gives_up_within_the_timeout() -> None:
    """The TLS handshake runs inside the first drain(): a peer that never answers must not hang the link."""
    board = MpBoard(stall=True)

    async def go() -> float:
        c = _client(board, timeout=0.5)
        t = time.monotonic()
        with pytest.raises(mqtt.MQTTError, match="did not answer"):
            await c.connect("broker", 8883)
        assert not c.connected
        return time.monotonic() - t

    assert asyncio.run(go()) < 2
    assert board.wires[0].closed, "and its socket is closed, not left for the GC"


def test_every_connection_is_closed_before_the_next() -> None:
    board = MpBoard()

    async def go() -> None:
        c = _client(board)
        for _ in range(5):
            await c.connect("broker", 1883)
        await c.aclose()

    asyncio.run(go())
    assert len(board.wires) == 5 and all(w.closed for w in board.wires), "no socket (or TLS session) leaks"


def test_a_resent_qos1_publish_keeps_its_packet_id_and_has_dup_set() -> None:
    board = MpBoard()

    async def go() -> list[bytes]:
        c = _client(board, timeout=0.3)
        await c.connect("broker", 1883)
        with pytest.raises(mqtt.MQTTError):
            await c.publish("t", b"readings", 1)  # no PUBACK: the connection is dropped
        await c.connect("broker", 1883)
        stop = asyncio.Event()
        acks = asyncio.create_task(_answer_pubacks(board, stop))
        await c.publish("t", b"readings", 1)  # the node sends the same message again
        await c.publish("t", b"next", 1)
        stop.set()
        await acks
        return [p for w in board.wires for p in packets(bytes(w.data)) if p[0] >> 4 == 3]

    first, again, nxt = asyncio.run(go())
    assert first[0] & 0x08 == 0 and again[0] & 0x08, "DUP on the resend (MQTT-4.4.0-1)"
    assert first[1:] == again[1:], "same packet id, same content"
    assert nxt[0] & 0x08 == 0 and nxt[5:7] != first[5:7]


def test_a_refused_subscription_is_an_error_not_a_success() -> None:
    board = MpBoard()

    async def go() -> None:
        c = _client(board)
        await c.connect("broker", 1883)
        task = asyncio.create_task(c.subscribe("kerbside/v1/0000beef/cmd", 1))
        await asyncio.sleep(0.01)
        board.wires[0].inbox += b"\x90\x03\x00\x01\x80"  # SUBACK, return code 0x80: failure
        with pytest.raises(mqtt.MQTTError, match="refused"):
            await task
        assert c.connected, "the connection itself is fine: readings can still go out"
        await c.aclose()

    asyncio.run(go())


def test_keepalive_zero_runs_no_pinger() -> None:
    board = MpBoard()

    async def go() -> int:
        c = _client(board, keepalive=0)
        await c.connect("broker", 1883)
        await asyncio.sleep(0.05)
        n = len(c._tasks)
        await c.aclose()
        return n

    assert asyncio.run(go()) == 1, "only the reader"
    assert all(p[0] != mqtt.PINGREQ for p in packets(bytes(board.wires[0].data)))


def test_an_oversize_message_is_read_past_and_handed_over_as_none() -> None:
    board = MpBoard()
    got: list[tuple[str, bytes | None, int]] = []

    async def go() -> None:
        c = _client(board, on_message=lambda t, p, pid: got.append((t, p, pid)) is None)
        await c.connect("broker", 1883)
        big = b"\x00\x03cmd\x00\x07" + b"x" * (mqtt.MAX_INCOMING + 1)
        n = len(big)
        board.wires[0].inbox += bytes((0x32, n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14)) + big
        small = b"\x00\x03cmd\x00\x08ok"
        board.wires[0].inbox += bytes((0x32, len(small))) + small
        for _ in range(500):
            if len(got) == 2:
                break
            await asyncio.sleep(0.002)
        assert c.connected, "the connection survives an oversize message"
        await c.aclose()

    asyncio.run(go())
    assert got == [("cmd", None, 7), ("cmd", b"ok", 8)]
