"""Collector test helpers: in-process and subprocess collectors, publishing, waiting."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

from kerbside.collector.service import Collector
from kerbside.core.influx import InfluxRefused
from kerbside.core.settings import Config, child_env
from kerbside.devstack import CollectorProcess, Mosquitto, free_port, wait_for
from kerbside.devstack import scrape_metrics as scrape  # noqa: F401  (the tests' name for it)


def make_config(tmp_path: Path, broker: Mosquitto, influx_url: str, db: str, **over: object) -> Config:
    cfg = Config()
    cfg.mqtt.url = broker.url
    cfg.mqtt.client_id = f"kc-{tmp_path.name[-20:]}"
    cfg.influx.url = influx_url
    cfg.influx.db = db
    cfg.spool.dir = str(tmp_path / "spool")
    cfg.spool.backoff_min_s = 0.2
    cfg.spool.backoff_max_s = 1.0
    cfg.http.port = free_port()
    for dotted, value in over.items():
        section, key = dotted.split("__")
        setattr(getattr(cfg, section), key, value)
    return cfg


class InProcess:
    """A Collector on a thread of the test process, for tests that need its clock or its counters."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time) -> None:
        self.collector = Collector(cfg, clock=clock)
        self.thread = threading.Thread(target=self.collector.run, name="collector", daemon=True)

    def __enter__(self) -> Collector:
        self.thread.start()
        wait_for(lambda: self.collector.source.subscribed, "collector connected and subscribed", 15)
        return self.collector

    def __exit__(self, *exc: object) -> None:
        self.collector.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "collector did not stop within 30 s"


def healthz(port: int) -> tuple[int, dict]:
    """The collector's /healthz: HTTP status and document (503 is an answer, not an error)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def collector_env(cfg: Config) -> dict[str, str]:
    return child_env(cfg)


def spawn(cfg: Config, log: Path, wait: bool = True) -> subprocess.Popen[bytes]:
    """`python -m kerbside collect` configured by `cfg` alone, logging to `log`; wait=True: until subscribed."""
    c = CollectorProcess(log.stem, log.parent, cfg.http.port, settings=cfg).start(wait, timeout=20)
    assert c.proc is not None
    return c.proc


class Publisher:
    """QoS1 publisher with a persistent connection; publish() returns once the broker has the message."""

    def __init__(self, broker: Mosquitto, client_id: str = "test-pub") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def publish_many(self, msgs: list[tuple[str, bytes]], retain: bool = False) -> None:
        infos = [self.client.publish(t, p, qos=1, retain=retain) for t, p in msgs]
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def mosquitto_pub(broker: Mosquitto, topic: str, payload: bytes, retain: bool = False) -> None:
    args = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic, "-s" if payload else "-n"]
    if retain:
        args.append("-r")
    subprocess.run(args, input=payload, check=True, timeout=10)


def make_stream(devices: int, total: int, seed: int, per_msg: tuple[int, int] = (10, 60),
                period: int = 60) -> tuple[list[tuple[str, bytes]], dict[str, list[int]]]:
    """Readings messages (air kit, synced clocks) for `devices` nodes, `total` readings in all, interleaved by device.

    Returns the messages in publish order and, per device, the sequence numbers sent.
    """
    import random

    from knode import wire

    rng = random.Random(seed)
    now = int(time.time())
    per_dev = total // devices
    t_start = now - per_dev * period - 3600
    queues: dict[str, list[tuple[str, bytes]]] = {}
    seqs: dict[str, list[int]] = {}
    for d in range(devices):
        dev = f"{0xC0110000 + d:08x}"
        msgs, seq, left = [], 1000 * d, per_dev + (total - per_dev * devices if d == 0 else 0)
        seqs[dev] = list(range(seq, seq + left))
        while left:
            n = min(left, rng.randint(*per_msg))
            rows = [(6, [rng.randint(0, 500), rng.randint(0, 800), rng.randint(0, 1200), rng.randint(-100, 350),
                         rng.randint(200, 990), rng.randint(9800, 10300)]) for _ in range(n)]
            t0 = t_start + (seq - 1000 * d) * period
            payload = wire.encode_readings(bytes.fromhex(dev), seq, 1, True, 1, t0, period, 6, rows)
            msgs.append((wire.topic(dev, "readings"), payload))
            seq += n
            left -= n
        queues[dev] = msgs
    out: list[tuple[str, bytes]] = []
    while any(queues.values()):
        for q in queues.values():
            if q:
                out.append(q.pop(0))
    return out, seqs


def seq_summary(influx: object, measurement: str = "air") -> dict[str, tuple[int, int, int, int]]:
    """device -> (count, sum, min, max) of the seq field: equal to the sent ones means all there, none extra."""
    out: dict[str, tuple[int, int, int, int]] = {}
    try:
        series = influx.query(f'SELECT COUNT("seq"), SUM("seq"), MIN("seq"), MAX("seq") FROM "{measurement}" GROUP BY device')  # type: ignore[attr-defined]
    except InfluxRefused as e:
        if "database not found" in e.message:
            return out  # the collector has not created it yet
        raise
    for s in series:
        _, count, total, lo, hi = s["values"][0]
        out[s["tags"]["device"]] = (count, total, lo, hi)
    return out


def expected_summary(seqs: dict[str, list[int]]) -> dict[str, tuple[int, int, int, int]]:
    return {d: (len(s), sum(s), min(s), max(s)) for d, s in seqs.items()}
