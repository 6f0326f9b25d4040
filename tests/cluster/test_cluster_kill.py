"""Kill the cluster under load: nothing a node had PUBACKed is lost, and everything is stored once in effect.

A 3-node RabbitMQ cluster secured by `broker-config --engine rabbitmq --apply`, two collectors consuming its
quorum queue (collector.source = "amqp"), InfluxDB, and 50 simulated nodes running the real firmware
(kerbside.simulator) with every cluster node in their broker list, a third starting on each. Mid-stream:

1. SIGKILL the queue's leader (its third of the nodes fail over), then restart it;
2. SIGKILL the broker node a third of the nodes are connected to (more by now: some moved there), restart it;
3. SIGKILL one collector, restart it.

Exact accounting per kill: readings published (accepted by the cluster: an audit queue bound beside the
collectors' records every message the broker routed), stored (distinct readings in InfluxDB), lost (must be
0), duplicated (a node's resend after a lost PUBACK, plus every delivery the broker repeated to a collector);
and the failover time the nodes saw. The figures go to build/test-artefacts/cluster-kill.json for
docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from rabbit_helpers import INGEST, QUEUE, TAP, TAP_USER, Secured, Taken, add_tap, secret_of, secure

from kerbside.collector.amqp_source import topic_of
from kerbside.collector.decode import decode
from kerbside.devcluster import RabbitCluster, RabbitNode
from kerbside.devstack import CollectorProcess, free_port, wait_for
from kerbside.simulator.fleet import Fleet, FleetConfig

pytestmark = [pytest.mark.services, pytest.mark.cluster, pytest.mark.slow]

AIR, TRAFFIC = 30, 20
PERIOD = 60
DURATION = 410 * PERIOD
"""50 nodes x 410 intervals: at least 20 000 readings."""
SPEEDUP = 150
ARTEFACT = Path(__file__).resolve().parents[2] / "build" / "test-artefacts" / "cluster-kill.json"
MEASUREMENTS = (("air", ""), ("traffic_flow", " WHERE \"direction\" = 'in'"), ("air_unsynced", ""),
                ("traffic_flow_unsynced", " WHERE \"direction\" = 'in'"))


class Tap(Taken):
    """Every readings message the cluster routed, with its arrival time, from the audit queue on a node never killed."""

    def __init__(self, secured: Secured, node: RabbitNode) -> None:
        self.copies: list[tuple[float, str, int, int]] = []
        """(arrival, device, first seq, count)"""
        super().__init__(secured, TAP_USER, TAP, node.index)

    def on_message(self, routing_key: str, body: bytes) -> None:
        d = decode(topic_of(routing_key), body, time.time())
        self.copies.append((time.monotonic(), d.device, d.seq, d.count))


class Links:
    """What each simulated node's firmware is connected to, sampled 20 times a second (the fleet's on_tick)."""

    def __init__(self) -> None:
        self.state: dict[int, tuple[bool, int]] = {}
        self.events: list[tuple[float, int, bool, int]] = []
        """(time, node index, connected, cluster node index 0..2)"""

    def tick(self, fleet: Fleet) -> None:
        now = time.monotonic()
        n = len(fleet.brokers)
        for vn in fleet.nodes:
            node = vn.node
            up = node is not None and node.client is not None and node.client.connected
            where = (vn.stats.index + (node.broker if node is not None else 0)) % n
            if self.state.get(vn.stats.index) != (up, where):
                self.state[vn.stats.index] = (up, where)
                self.events.append((now, vn.stats.index, up, where))

    def on(self, cluster_node: int, at: float) -> set[int]:
        """Nodes connected to a cluster node at a moment."""
        last: dict[int, tuple[bool, int]] = {}
        for t, i, up, where in self.events:
            if t > at:
                break
            last[i] = (up, where)
        return {i for i, (up, where) in last.items() if up and where == cluster_node}

    def failover(self, nodes: set[int], killed: int, at: float) -> list[float]:
        """For each node, seconds from the kill until it was connected to another cluster node."""
        out = []
        for i in sorted(nodes):
            back = next((t for t, j, up, where in self.events if j == i and t > at and up and where != killed), None)
            assert back is not None, f"node {i} never reconnected after cluster node {killed + 1} was killed"
            out.append(back - at)
        return out


def _stored(influx) -> set[tuple[str, int]]:  # type: ignore[no-untyped-def]
    out: set[tuple[str, int]] = set()
    for m, where in MEASUREMENTS:
        for s in influx.query(f'SELECT "seq" FROM "{m}"{where} GROUP BY "device"'):
            out.update((s["tags"]["device"], int(v[1])) for v in s["values"])
    return out


def _redelivered(collectors: list[CollectorProcess]) -> int:
    """Deliveries the broker repeated, from the collectors' logs (a line each, written before a kill can lose it)."""
    return sum(c.log.read_text(errors="replace").count("redelivered: ") for c in collectors if c.log.exists())


def test_killing_the_leader_a_broker_node_and_a_collector_loses_nothing(influxd, influx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster = RabbitCluster(tmp_path / "cluster", 3, anonymous=False).start()
    collectors: list[CollectorProcess] = []
    tap: Tap | None = None
    links = Links()
    try:
        cfg = FleetConfig(brokers=[n.mqtt_url for n in cluster.nodes], air=AIR, traffic=TRAFFIC, seed=15, duration=DURATION,
                          speedup=SPEEDUP, period=PERIOD, sample=PERIOD, state_dir=tmp_path / "sim", drain_timeout=180)
        fleet = Fleet(cfg, on_tick=links.tick)
        fleet.write_registry(tmp_path / "registry.json")
        devices = tuple(vn.stats.device for vn in fleet.nodes)
        secured = secure(cluster, tmp_path, devices, registry=tmp_path / "registry.json")
        add_tap(secured)
        fleet.passwords = {d: secret_of(d) for d in devices}
        expected = fleet.expected().total
        assert expected >= 20_000 and len(devices) >= 50

        leader = cluster.leader(QUEUE)
        tap_node, third = [n for n in cluster.nodes if n is not leader]  # the tap's node is never killed
        tap = Tap(secured, tap_node)
        for name in INGEST[:2]:
            settings = secured.collector_settings(name, influxd.url, influx.db, tmp_path)
            settings["log"] = {"level": "DEBUG"}  # a line per repeated delivery: counted even in a killed collector
            # Batches of up to 2 s (linger 1 s): at any moment each collector holds deliveries it has not acked yet,
            # so a kill has something to take back (with the default 5 ms linger, little is ever in flight).
            settings["batch"] = {"interval_s": 2.0, "linger_s": 1.0}
            collectors.append(CollectorProcess(name, tmp_path / name, free_port(), settings=settings).start())

        stats: list = []
        runner = threading.Thread(target=lambda: stats.extend(asyncio.run(fleet.run())), daemon=True)
        runner.start()
        kills: list[dict] = []

        def kill_broker(node: RabbitNode, at: float, what: str) -> None:
            wait_for(lambda: fleet.progress() >= at, f"{at:.0%} of the run", 600, interval=0.1)
            t = time.monotonic()
            on_it = links.on(node.index - 1, t)
            cluster.kill(node.index)
            kills.append({"kill": what, "node": node.name, "at": t, "nodes_on_it": len(on_it),
                          "redelivered_before": _redelivered(collectors), "on_it": on_it, "index": node.index - 1})
            cluster.restart(node.index)

        kill_broker(leader, 0.25, "queue leader")
        # a new leader was elected while it was down; back, the old one is a follower (3.10 does not rebalance)
        assert cluster.leader(QUEUE) is not leader
        kill_broker(third, 0.50, "broker node")
        wait_for(lambda: fleet.progress() >= 0.75, "75 % of the run", 600, interval=0.1)
        t = time.monotonic()
        kills.append({"kill": "collector", "node": collectors[0].name, "at": t, "nodes_on_it": 0,
                      "redelivered_before": _redelivered(collectors)})
        collectors[0].kill()
        collectors[0].start()
        runner.join(DURATION / SPEEDUP + 600)
        assert not runner.is_alive()

        produced = sum(s.produced for s in stats)
        sent = sum(s.sent for s in stats)
        assert produced == expected and sent == produced, (expected, produced, sent)
        stored: set[tuple[str, int]] = set()

        def all_stored() -> bool:
            stored.clear()
            stored.update(_stored(influx))
            return len(stored) >= expected

        wait_for(all_stored, f"{expected} readings in InfluxDB", 180, interval=1)
        wait_for(lambda: cluster.queue_depth(QUEUE) == (0, 0), "the queue emptied", 60, interval=1)
        tap_seen = tap.copies[:]
        assert tap.error is None, tap.error
    finally:
        if tap is not None:
            tap.close()
        for c in collectors:
            c.stop()
        cluster.stop()

    # --- the accounting ---------------------------------------------------------------------------------
    readings = {(vn.stats.device, seq) for vn in fleet.nodes for seq in range(next(s.produced for s in stats
                                                                                   if s.device == vn.stats.device))}
    assert stored == readings, f"lost {len(readings - stored)}, unexpected {len(stored - readings)}"
    first_seen: dict[tuple[str, int], float] = {}
    copies: dict[tuple[str, int], int] = defaultdict(int)
    resent_at: list[float] = []
    for at, device, seq, count in tap_seen:
        for s in range(seq, seq + count):
            key = (device, s)
            copies[key] += 1
            if key in first_seen:
                resent_at.append(at)
            else:
                first_seen[key] = at
    assert set(first_seen) == readings, "the audit queue holds every reading the cluster accepted"
    bounds = [k["at"] for k in kills] + [float("inf")]
    redelivered_end = _redelivered(collectors)
    phases = []
    for k, (lo, hi) in zip(kills, itertools.pairwise(bounds), strict=True):
        published = {r for r, t in first_seen.items() if lo <= t < hi}
        kept = published & stored
        red_after = kills[kills.index(k) + 1]["redelivered_before"] if kills.index(k) + 1 < len(kills) else redelivered_end
        row = {"kill": k["kill"], "node": k["node"], "nodes_connected": k["nodes_on_it"],
               "published": len(published), "stored": len(kept), "lost": len(published - kept),
               "resent_by_nodes": sum(1 for t in resent_at if lo <= t < hi),
               "redelivered_to_collectors": red_after - k["redelivered_before"]}
        row["duplicated"] = row["resent_by_nodes"] + row["redelivered_to_collectors"]
        if "on_it" in k:
            times = links.failover(k["on_it"], k["index"], lo)
            # real seconds from the kill until the node's CONNACK from another cluster node: the broker's part (a node's
            # own backoff, 1-2 s of its clock, passes SPEEDUP times faster here)
            row["failover_s"] = {"nodes": len(times), "min": round(min(times), 2), "median": round(statistics.median(times), 2),
                                 "max": round(max(times), 2)}
        phases.append(row)
    before = {r for r, t in first_seen.items() if t < bounds[0]}
    summary = {"nodes": len(devices), "readings": expected, "stored": len(stored), "lost": len(readings - stored),
               "before_first_kill": len(before), "phases": phases,
               "duplicates_total": sum(copies.values()) - len(copies) + redelivered_end}
    ARTEFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTEFACT.write_text(json.dumps(summary, indent=2) + "\n")
    print("cluster kill test:", json.dumps(summary, indent=2))
    assert all(p["lost"] == 0 for p in phases)
    assert phases[0]["nodes_connected"] >= len(devices) // 4 and phases[1]["nodes_connected"] >= len(devices) // 4
    assert phases[2]["redelivered_to_collectors"] > 0 or phases[2]["published"] > 0
