"""Three collectors in one MQTT v5 shared-subscription group on one real Mosquitto.

The load splits, nothing is lost or doubled in effect, and a collector killed
with SIGKILL mid-stream loses nothing once it is back with its persistent
session (Mosquitto 2.0 drops the in-flight QoS1 messages of a *clean-session*
shared subscriber that disconnects, eclipse-mosquitto/mosquitto#2662; see
docs/scaling.md).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from kerbside.devstack import CollectorProcess, Mosquitto, free_port
from knode import wire

pytestmark = pytest.mark.services

DEVICES = 20
MESSAGES = 60
PER_MESSAGE = 10
PERIOD = 60


def _collector(n: int, broker: Mosquitto, influx_url: str, db: str, root: Path) -> CollectorProcess:
    return CollectorProcess(f"collector-{n}", root / f"c{n}", free_port(), settings={
        "mqtt": {"url": broker.url, "group": "collectors", "client_id": f"collector-{n}"},
        "influx": {"url": influx_url, "db": db}, "spool": {"dir": root / f"c{n}" / "spool"},
        "batch": {"interval_s": 0.2}})


def _messages(c: CollectorProcess) -> float:
    return (c.metrics() or {}).get("kerbside_messages_total", 0.0)


def _payloads(now: int) -> list[tuple[str, bytes]]:
    out = []
    t_start = now - MESSAGES * PER_MESSAGE * PERIOD
    for k in range(MESSAGES):
        for d in range(DEVICES):
            dev = (0x5C000000 + d).to_bytes(4, "big")
            rows = [(6, [50 + d, 90 + k % 7, 150, 120, 600, 10100]) for _ in range(PER_MESSAGE)]
            seq = k * PER_MESSAGE
            out.append((wire.topic(dev.hex(), "readings"),
                        wire.encode_readings(dev, seq, 1, True, 1, t_start + seq * PERIOD, PERIOD, 6, rows)))
    return out


def test_three_collectors_split_the_load_and_survive_a_kill(tmp_path: Path, influx) -> None:
    broker = Mosquitto("mosquitto", tmp_path / "broker", free_port()).start()
    collectors = [_collector(n, broker, influx.url, influx.db, tmp_path) for n in (1, 2, 3)]
    try:
        for c in collectors:
            c.start()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="load", protocol=mqtt.MQTTv5)
        pub.max_inflight_messages_set(200)
        pub.max_queued_messages_set(0)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        payloads = _payloads(int(time.time()))
        infos = []
        killed_at = len(payloads) // 2
        for i, (topic, payload) in enumerate(payloads):
            infos.append(pub.publish(topic, payload, qos=1))
            if i == killed_at:
                for info in infos:
                    info.wait_for_publish(30)
                shares_before_kill = [_messages(c) for c in collectors]
                collectors[1].kill()
        for info in infos:
            info.wait_for_publish(30)
        pub.loop_stop()
        pub.disconnect()
        collectors[1].start()  # same client id: its persistent session hands back what it had in flight

        expected = DEVICES * MESSAGES * PER_MESSAGE
        deadline = time.monotonic() + 90
        count = 0
        while time.monotonic() < deadline:
            series = influx.query('SELECT count("pm25") FROM "air"')
            count = series[0]["values"][0][1] if series else 0
            if count >= expected:
                break
            time.sleep(0.5)
        assert count == expected, f"{expected - count} readings lost"
        per_device = influx.query('SELECT count("seq"), min("seq"), max("seq") FROM "air" GROUP BY "device"')
        assert len(per_device) == DEVICES
        for s in per_device:
            _, n, lo, hi = s["values"][0]
            assert (n, lo, hi) == (MESSAGES * PER_MESSAGE, 0, MESSAGES * PER_MESSAGE - 1), s["tags"]
        # every member of the group took a share before the kill
        assert all(share > 0 for share in shares_before_kill), shares_before_kill
        # members see part of each stream, so they leave gap records to `kerbside gaps scan`, which finds none
        assert influx.query('SELECT count("missing") FROM "kerbside_gaps"') == []
        scan = subprocess.run([sys.executable, "-m", "kerbside", "gaps", "scan", "--influx", influx.url, "--db", influx.db,
                               "--since", "2d"], capture_output=True, text=True, timeout=60)
        assert scan.returncode == 0 and scan.stderr.startswith("0 gap records written"), scan.stderr
    finally:
        for c in collectors:
            c.stop()
        broker.stop()
