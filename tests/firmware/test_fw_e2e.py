"""End to end: the real firmware on a simulated node, a real mosquitto, a 24 h outage on a virtual clock."""

from __future__ import annotations

import asyncio
import queue
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from kerbside.collector.decode import decode
from kerbside.simulator.fleet import FaultPlan, Fleet, FleetConfig, VirtualNode

HOUR = 3600


class Collector:
    """A paho QoS1 subscriber that keeps every message in arrival order."""

    def __init__(self, port: int, topic: str) -> None:
        self.q: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"e2e-{time.monotonic_ns()}")
        self.c.on_message = lambda c, u, m: self.q.put((m.topic, m.payload))
        ready: queue.Queue[bool] = queue.Queue()
        self.c.on_subscribe = lambda *a: ready.put(True)
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(topic, 1)
        self.c.loop_start()
        ready.get(timeout=10)

    def drain(self) -> list[tuple[str, bytes]]:
        out = []
        while True:
            try:
                out.append(self.q.get(timeout=0.5))
            except queue.Empty:
                return out

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _watch_production(produced: dict[int, tuple[int, bool]]):
    """Record (t, synced) of every reading as the node stores it, to compare with what arrives."""

    def boot(vn: VirtualNode) -> None:
        store = vn.node.store
        real = store.append

        def append(t: int, synced: bool, period: int, expected: int, samples: int, values: list) -> int:
            seq = real(t, synced, period, expected, samples, values)
            produced[seq] = (t, synced)
            return seq

        store.append = append

    return boot


@pytest.mark.services
def test_a_day_offline_then_every_reading_arrives_once_in_order_with_its_time(mosquitto, tmp_path: Path) -> None:
    start = float(int(time.time()) // 60 * 60 - 27 * HOUR)
    cfg = FleetConfig(broker=mosquitto.url, air=1, traffic=0, seed=7, start=start, duration=26 * HOUR,
                      speedup=4000, period=60, sample=60, state_dir=tmp_path / "flash", drain_timeout=60,
                      faults=FaultPlan(offline={0: [(1 * HOUR, 24 * HOUR)]}))
    col = Collector(mosquitto.port, "kerbside/v1/+/readings")
    produced: dict[int, tuple[int, bool]] = {}
    try:
        fleet = Fleet(cfg, on_boot=_watch_production(produced))
        stats = asyncio.run(fleet.run())
        msgs = col.drain()
    finally:
        col.close()
    (s,) = stats
    assert s.buffered == 0 and s.dropped == 0
    arrived: list[tuple[int, int, bool]] = []  # (seq, t, synced) in arrival order
    for topic, payload in msgs:
        d = decode(topic, payload, fleet.end + 600)
        assert d.device == s.device
        for i in range(d.count):
            arrived.append((d.seq + i, d.t0 + i * d.period, d.synced))
    # QoS 1 is at least once: a PUBACK lost when the link drops makes the node send that message
    # again. The collector keeps the first copy of each seq; a repeat must be an identical copy.
    first: dict[int, tuple[int, int, bool]] = {}
    for a in arrived:
        assert first.setdefault(a[0], a) == a, f"seq {a[0]} arrived twice with different content"
    assert len(arrived) - len(first) <= 2 * 60, "at most a message repeated at each of the two link losses"
    arrived = list(first.values())
    seqs = [a[0] for a in arrived]
    assert seqs == sorted(seqs), "in order"
    assert seqs == list(range(len(produced))), "no gap: every stored reading was sent"
    # one reading a minute for 26 simulated hours, plus the boot reading (the minute under way when
    # NTP set the clock): exactly, however loaded the host is (simulator.expected)
    assert len(produced) == s.produced == s.expected == 26 * 60 + 1
    synced_at = min(seq for seq, (t, sy) in produced.items() if sy)
    assert synced_at == 1
    for seq, t, synced in arrived:
        t_node, _ = produced[seq]
        if seq < synced_at:
            # taken before NTP in this boot: re-stamped by the sync offset to the power-on second, sent as synced
            assert synced and t == start - 1
        else:
            assert (t, synced) == (t_node, True), f"seq {seq}: original timestamp kept"
    outage = [t for seq, t, _ in arrived if start + 1.2 * HOUR <= t < start + 24.8 * HOUR]
    assert len(outage) == round(23.6 * 60), "the outage's readings were buffered and delivered"
    times = [a[1] for a in arrived if a[0] >= synced_at]
    assert times == list(range(int(start), int(start + 26 * HOUR), 60)), "every minute of the run, once"
    # the interval cut short by NTP overlaps the first synced one (the minute it started in): never later
    assert all(a[1] <= times[0] + 60 for a in arrived if a[0] < synced_at)
