"""Fault injection through the fleet: a clock that never syncs, a power cut, a broken sensor."""

from __future__ import annotations

import asyncio
import queue
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from kerbside.collector.decode import decode
from kerbside.simulator.fleet import FaultPlan, Fleet, FleetConfig


@pytest.mark.services
def test_unsynced_node_reboot_broken_sensor_and_broker_outage(mosquitto, tmp_path: Path) -> None:
    q: queue.Queue[tuple[str, bytes]] = queue.Queue()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: q.put((m.topic, m.payload))
    ready: queue.Queue[bool] = queue.Queue()
    sub.on_subscribe = lambda *a: ready.put(True)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("kerbside/v1/+/readings", 1)
    sub.loop_start()
    ready.get(timeout=10)
    start = float(int(time.time()) // 60 * 60 - 4 * 3600)
    cfg = FleetConfig(broker=mosquitto.url, air=3, traffic=0, seed=11, start=start, duration=3 * 3600, speedup=2000,
                      period=60, sample=60, state_dir=tmp_path / "flash",
                      faults=FaultPlan(never_sync_nodes=1, reboot_nodes=1, broken_sensor_nodes=1,
                                       broker_down=[(3600, 1800)]))
    fleet = Fleet(cfg)
    try:
        stats = asyncio.run(fleet.run())
        msgs = []
        while True:
            try:
                msgs.append(q.get(timeout=0.5))
            except queue.Empty:
                break
    finally:
        sub.loop_stop()
        sub.disconnect()
    never = next(vn for vn in fleet.nodes if vn.board.faults.never_sync).stats.device
    broken = next(vn for vn in fleet.nodes if vn.board.faults.broken_sensor).stats.device
    rebooted = next(s for s in stats if s.boots == 2).device
    assert len({never, broken, rebooted}) == 3
    per: dict[str, dict[int, tuple[int, bool, int, list]]] = {s.device: {} for s in stats}
    for topic, payload in msgs:
        d = decode(topic, payload, time.time() + 60)
        for i in range(d.count):
            per[d.device].setdefault(d.seq + i, (d.boot, d.synced, d.t0 + i * d.period, d.lines[i]))
    for s in stats:
        seqs = sorted(per[s.device])
        assert seqs == list(range(s.produced)), f"{s.device}: every reading, no gap {s} {never} {broken} {rebooted}"
        assert s.produced == s.expected, f"{s.device}: every reading it was due, exactly"
        assert s.buffered == 0 and s.dropped == 0
    by = {s.device: s for s in stats}
    # three hours of minutes; a boot reading per boot that set its clock; the power cut loses the minute
    # it interrupts (and the next if power returns in its last second)
    assert by[never].produced == 3 * 60
    assert by[broken].produced == 3 * 60 + 1
    assert by[rebooted].produced in (3 * 60 + 2 - 1, 3 * 60 + 2 - 2)
    assert all(not synced for _, synced, _, _ in per[never].values()), "a boot that never synced says so"
    assert all(t < 1000000000 for _, _, t, _ in per[never].values())  # its own clock, from 2000
    boots = [b for b, _, _, _ in (per[rebooted][k] for k in sorted(per[rebooted]))]
    assert boots == sorted(boots) and set(boots) == {1, 2}, "sequence continues across the power cut"
    assert all(synced for _, synced, _, _ in per[rebooted].values())
    assert all("pm25" not in line for _, _, _, line in per[broken].values()), "noise never becomes a PM value"
    assert any("no2" in line for _, _, _, line in per[broken].values()), "the other sensors still report"


@pytest.mark.services
def test_the_real_broker_stopped_and_restarted_mid_run(tmp_path: Path) -> None:
    """What the demo does: kill mosquitto under a running fleet, start it again; nothing is lost."""
    from kerbside.devstack import Mosquitto, free_port

    broker = Mosquitto("restart-mosquitto", tmp_path / "mq", free_port()).start()
    q: queue.Queue[tuple[str, bytes]] = queue.Queue()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="restart-collector", clean_session=False)
    sub.on_message = lambda c, u, m: q.put((m.topic, m.payload))
    sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("kerbside/v1/+/readings", 1)
    sub.reconnect_delay_set(0.05, 0.2)
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    start = float(int(time.time()) // 60 * 60 - 5 * 3600)
    cfg = FleetConfig(broker=broker.url, air=1, traffic=1, seed=5, start=start, duration=4 * 3600, speedup=1200,
                      period=60, sample=60, state_dir=tmp_path / "flash", drain_timeout=60)

    async def outage(fleet: Fleet) -> None:
        await asyncio.sleep(3)
        broker.stop()  # SIGTERM: mosquitto saves its queues (after SIGKILL a broker may lose what it held)
        await asyncio.sleep(2)  # ~40 simulated minutes without a broker
        broker.start()

    async def go() -> list:
        fleet = Fleet(cfg)
        t = asyncio.create_task(outage(fleet))
        stats = await fleet.run()
        await t
        return stats

    try:
        stats = asyncio.run(go())
        msgs = []
        while True:
            try:
                msgs.append(q.get(timeout=1.0))
            except queue.Empty:
                break
    finally:
        sub.loop_stop()
        sub.disconnect()
        broker.stop()
    got: dict[str, set[int]] = {s.device: set() for s in stats}
    for topic, payload in msgs:
        d = decode(topic, payload, time.time() + 60)
        got[d.device].update(range(d.seq, d.seq + d.count))
    for s in stats:
        assert s.buffered == 0 and s.dropped == 0
        assert s.last_err, "the node did see the broker go away"
        assert got[s.device] == set(range(s.produced)), f"{s.device}: every reading arrived"
        assert s.produced == s.expected == 4 * 60 + 1  # every minute of the run and the boot reading
