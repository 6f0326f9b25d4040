"""When the collector cuts a batch (collector/batching.py), and what a cut batch holds; no broker, no clock races."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kerbside.collector import batching
from kerbside.collector.service import Collector, Incoming
from kerbside.core.settings import BatchConfig, Config
from knode import wire

RULES = BatchConfig(lines=100, interval_s=1.0, max_messages=10, linger_s=0.005)


@pytest.mark.parametrize(("lines", "messages", "age", "cut"), [
    (0, 0, 5.0, False),  # nothing to cut, however long ago
    (99, 9, 0.999, False),  # just under every bound
    (100, 1, 0.0, True),  # lines
    (5, 10, 0.0, True),  # messages, rejected ones included
    (1, 1, 1.0, True),  # the first message waited interval_s
])
def test_cut_rules(lines: int, messages: int, age: float, cut: bool) -> None:
    assert batching.due(lines, messages, age, RULES) is cut


@pytest.mark.parametrize(("messages", "age", "wait"), [
    (0, 0.0, batching.IDLE_POLL_S),  # idle: look up now and then to notice stop()
    (1, 0.0, 0.005),  # linger: a quiet moment this long cuts the batch
    (3, 0.998, 0.002),  # never past the interval
    (3, 1.5, 0.0),  # overdue: cut at once
])
def test_how_long_the_decoder_waits_for_the_next_message(messages: int, age: float, wait: float) -> None:
    assert batching.wait_s(messages, age, RULES) == pytest.approx(wait)


def _readings(seq: int, n: int) -> Incoming:
    t0 = int(time.time()) - 3600
    payload = wire.encode_readings(bytes.fromhex("0000000a"), seq, 1, True, 1, t0 + seq * 60, 60, 6,
                                   [(6, [1, 2, 3, 4, 5, 10000])] * n)
    return Incoming(wire.topic("0000000a", "readings"), payload, seq + 1, 1, 0, time.monotonic())


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    cfg = Config()
    cfg.spool.dir = str(tmp_path / "spool")
    cfg.batch = BatchConfig(lines=10, interval_s=3600, max_messages=4, linger_s=0.005)
    col = Collector(cfg)  # nothing connects until run()
    yield col
    col.spool.close()
    col.writer.close()


def test_a_batch_is_due_at_its_line_bound_and_holds_exactly_its_messages(collector: Collector) -> None:
    collector.handle(_readings(0, 4))
    collector.handle(_readings(4, 4))
    assert not collector.due()  # 8 lines, 2 messages
    collector.handle(_readings(8, 4))
    assert collector.due()  # 12 lines
    p = collector._cut()
    assert p is not None and [a.mid for a in p.acks] == [1, 5, 9] and p.dead == []
    assert sum(len(v) for v in p.lines.values()) == 12 and p.state is not None and '"hi":11' in p.state
    assert (collector.unacked(), collector._cut()) == (3, None)  # cut, not yet durable; nothing left to cut


def test_rejected_messages_count_toward_the_message_bound(collector: Collector) -> None:
    collector.handle(_readings(0, 1))
    for mid in range(3):
        collector.handle(Incoming("kerbside/v1/0000000a/readings", b"\xff not cbor", 100 + mid, 1, 0, time.monotonic()))
    assert collector.due()  # 4 messages, 1 line
    p = collector._cut()
    assert p is not None and len(p.acks) == 4 and [d[1] for d in p.dead] == ["cbor_malformed"] * 3
    assert collector.metrics.get("kerbside_rejected_total", reason="cbor_malformed") == 3


def test_a_batch_without_readings_carries_no_sequence_state(collector: Collector) -> None:
    collector.handle(Incoming("kerbside/v1/0000000a/status", wire.encode_status(
        {"v": 1, "id": bytes.fromhex("0000000a"), "online": True, "t": int(time.time()), "synced": True}), 7, 1, 0, 0.0))
    p = collector._cut()
    assert p is not None and p.state is None and len(p.lines[""]) == 1
