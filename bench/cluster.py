"""Clustered-broker benchmark (not a test): readings/s stored through a 3-node RabbitMQ cluster with 1, 2 and 3
collectors, side by side with one Mosquitto and one collector, in the same run on the same box.

  .venv/bin/python bench/cluster.py              # 30 000 readings per configuration, a few minutes
  .venv/bin/python bench/cluster.py --small      # 10 000

Each configuration drains the same queued stream (one reading per message, round-robin over --devices nodes,
published over MQTT QoS1 as nodes publish): the stream is published while no collector consumes (into the
collector's persistent session on Mosquitto; into the quorum queue on the cluster, through all three nodes),
then the collectors start and the clock runs until every reading is queryable in a fresh InfluxDB database.
The cluster is secured by `broker-config --engine rabbitmq` (per-node accounts, as in production). Prints
readings/s per configuration and the ratio to Mosquitto.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from rabbit_helpers import INGEST, QUEUE, secret_of, secure  # noqa: E402

from kerbside.core.influx import InfluxClient  # noqa: E402
from kerbside.devcluster import RabbitCluster  # noqa: E402
from kerbside.devstack import CollectorProcess, Influxd, Mosquitto, free_port, wait_for  # noqa: E402


def _bench_collector():  # type: ignore[no-untyped-def]
    """bench/collector.py (its stream of readings), by path: `collector` is also a directory of the repository."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_collector", ROOT / "bench" / "collector.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def publish(endpoints: list[tuple[int, str, str]], msgs: list[tuple[str, bytes]]) -> float:
    """Publish every message QoS1, each device's through its own connection (as nodes do), spread over endpoints.

    endpoints: (port, user or "", password) per broker node; a device's connection goes to endpoint hash % n.
    Returns msgs/s until every PUBACK is in."""
    by_dev: dict[str, list[tuple[str, bytes]]] = {}
    for t, p in msgs:
        by_dev.setdefault(t.split("/")[2], []).append((t, p))
    clients = {}
    for i, dev in enumerate(sorted(by_dev)):
        port, user, _ = endpoints[i % len(endpoints)]
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=dev, protocol=mqtt.MQTTv311, clean_session=True)
        if user:
            c.username_pw_set(dev, secret_of(dev))
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients[dev] = c
    t0 = time.perf_counter()
    errors: list[BaseException] = []

    def run(dev: str) -> None:
        try:
            infos = [clients[dev].publish(t, p, qos=1) for t, p in by_dev[dev]]
            for info in infos:
                info.wait_for_publish(300)
                if not info.is_published():
                    raise RuntimeError(f"{dev}: a publish was not acknowledged")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(d,)) for d in by_dev]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = len(msgs) / (time.perf_counter() - t0)
    for c in clients.values():
        c.loop_stop()
        c.disconnect()
    if errors:
        raise errors[0]
    return rate


def stored(influx: InfluxClient) -> int:
    series = influx.query('SELECT count("seq") FROM "air"')
    return int(series[0]["values"][0][1]) if series else 0


def drain(collectors: list[CollectorProcess], influx: InfluxClient, expected: int) -> float:
    """Start the collectors; readings/s from their start until every reading is queryable."""
    t0 = time.perf_counter()
    for c in collectors:
        c.start(timeout=60)
    wait_for(lambda: stored(influx) >= expected, f"{expected} readings stored", 900, interval=0.05)
    rate = expected / (time.perf_counter() - t0)
    for c in collectors:
        c.stop()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=30_000)
    ap.add_argument("--devices", type=int, default=60)
    ap.add_argument("--small", action="store_true", help="10 000 readings")
    args = ap.parse_args()
    n = 10_000 if args.small else args.readings
    msgs, _ = _bench_collector().stream(n, 1, args.devices, seed=3, first_device=0xC1000000)
    expected = len(msgs)
    devices = tuple(sorted({t.split("/")[2] for t, _ in msgs}))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kerbside-bench-cluster-") as tmp:
        root = Path(tmp)
        influxd = Influxd("influxd", root / "influxd", free_port()).start()
        mosq = Mosquitto("mosquitto", root / "mosquitto", free_port()).start()
        cluster = RabbitCluster(root / "cluster", 3, anonymous=False)
        try:
            t0 = time.perf_counter()
            cluster.start()
            results["cluster start"] = {"s": round(time.perf_counter() - t0, 1),
                                        "rss_mib": [round(x) for x in cluster.rss_mib()]}
            secured = secure(cluster, root, devices)

            def db(name: str) -> InfluxClient:
                client = InfluxClient(influxd.url, name, timeout=30)
                client.query(f'CREATE DATABASE "{name}"', post=True)
                return client

            # Mosquitto, one collector with a persistent session
            col = CollectorProcess("mosq-collector", root / "mosq-collector", free_port(), settings={
                "mqtt": {"url": mosq.url, "client_id": "bench-collector"}, "influx": {"url": influxd.url, "db": "b_mosq"},
                "spool": {"dir": root / "mosq-collector" / "spool"}, "log": {"level": "WARNING"}})
            col.start(timeout=60)
            col.stop()  # its session stays, queueing the stream
            pub = publish([(mosq.port, "", "")], msgs)
            influx = db("b_mosq")
            results["mosquitto, 1 collector"] = {"publish_msgs_s": round(pub),
                                                 "readings_s": round(drain([col], influx, expected))}
            for k in (1, 2, 3):
                name = f"b_cluster{k}"
                secured.purge()
                endpoints = [(node.mqtt_port, "node", "") for node in cluster.nodes]
                pub = publish(endpoints, msgs)
                influx = db(name)
                collectors = []
                for c in INGEST[:k]:
                    settings = secured.collector_settings(c, influxd.url, name, root / name)
                    settings["log"] = {"level": "WARNING"}
                    settings.pop("batch")
                    collectors.append(CollectorProcess(c, root / name / c, free_port(), settings=settings))
                results[f"cluster, {k} collector{'s' if k > 1 else ''}"] = {
                    "publish_msgs_s": round(pub), "readings_s": round(drain(collectors, influx, expected)),
                    "rss_mib": [round(x) for x in cluster.rss_mib()]}
                # list_queues reports from statistics emitted every few seconds: wait for them to catch up
                wait_for(lambda: cluster.queue_depth(QUEUE) == (0, 0), "every delivery acked (the queue empty)", 60,
                         interval=1)
        finally:
            cluster.stop()
            mosq.stop()
            influxd.stop()
    base = results["mosquitto, 1 collector"]["readings_s"]
    for r in results.values():
        if "readings_s" in r:
            r["ratio_to_mosquitto"] = round(r["readings_s"] / base, 2)
    print(json.dumps({"readings": expected, "devices": len(devices), "results": results}, indent=2))


if __name__ == "__main__":
    main()
