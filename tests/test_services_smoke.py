"""The fixtures start real brokers: a vector goes mosquitto_pub -> mosquitto -> decoder -> influxd -> /query."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from influx_helpers import as_point
from kerbside.collector.decode import decode

pytestmark = pytest.mark.services


def test_vector_through_real_mosquitto_and_influxd(mosquitto, influx, vectors: list[dict], tmp_path) -> None:
    v = next(x for x in vectors if x["name"] == "air_batch_broken_pm_sensor")
    payload = tmp_path / "payload.cbor"
    payload.write_bytes(bytes.fromhex(v["payload_hex"]))
    port = str(mosquitto.port)
    sub = subprocess.Popen([shutil.which("mosquitto_sub"), "-h", "127.0.0.1", "-p", port, "-t", "kerbside/v1/+/readings",
                            "-q", "1", "-C", "1", "-F", "%t %x", "-W", "20"], stdout=subprocess.PIPE, text=True)
    try:
        # publish until the subscriber is surely listening, then read what it got
        for _ in range(50):
            subprocess.run([shutil.which("mosquitto_pub"), "-h", "127.0.0.1", "-p", port, "-q", "1", "-t", v["topic"],
                            "-f", str(payload)], check=True)
            try:
                out, _ = sub.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        sub.kill()
    topic, hexpayload = out.split()
    assert (topic, hexpayload) == (v["topic"], v["payload_hex"])
    lines = decode(topic, bytes.fromhex(hexpayload), v["now"]).lines
    influx.write(lines)
    assert influx.points("air") == {as_point(line) for line in v["lines"]}


def test_influxd_answers_influxql(influx) -> None:
    influx.write(["air,device=00c0ffee pm25=9.8 1767222000000000000", "air,device=00c0ffee pm25=9.8 1767222000000000000"])
    (series,) = influx.query('SELECT count("pm25") FROM "air"')
    assert series["values"][0][1] == 1, "identical points overwrite: a replay is idempotent"
