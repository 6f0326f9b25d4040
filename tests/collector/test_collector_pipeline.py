"""The collector's handling path against a real InfluxDB: type conflicts, gaps and backfill, registry, fuzzing.

These drive Collector.handle()/flush() directly (no broker): the MQTT side is covered by the other test files.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from kc_helpers import make_config  # type: ignore[import-not-found]

from kerbside.collector.dlq import DeadLetters
from kerbside.collector.service import Collector, Incoming
from kerbside.core.registry import Device, Registry
from knode import wire

pytestmark = pytest.mark.services

DEV = "00c0ffee"
PERIOD = 60


def _msg(topic: str, payload: bytes) -> Incoming:
    return Incoming(topic, payload, mid=1, qos=1, generation=-1, received=0.0)  # generation -1: never acked


def _readings(dev: str, seq: int, n: int, t_base: int) -> Incoming:
    rows = [(6, [10, 20, 30, 150, 500, 10000]) for _ in range(n)]
    payload = wire.encode_readings(bytes.fromhex(dev), seq, 1, True, 1, t_base + seq * PERIOD, PERIOD, 6, rows)
    return _msg(wire.topic(dev, "readings"), payload)


@pytest.fixture
def make(tmp_path: Path, influx, influxd):  # type: ignore[no-untyped-def]
    made: list[Collector] = []

    def factory(**over: object) -> Collector:
        cfg = make_config(tmp_path, _NoBroker(), influxd.url, influx.db, **over)
        cfg.http.port = 0
        c = Collector(cfg)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.spool.close()
        c.writer.close()


class _NoBroker:
    url = "mqtt://127.0.0.1:1"


def test_field_type_conflict_writes_good_lines_and_dead_letters_bad(make, influx) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time())
    influx.write([f"status,device={DEV} fw=1i {(now - 10) * 10**9}"])  # fw is an integer field now
    col = make()
    status = wire.encode_status({"v": 1, "id": bytes.fromhex(DEV), "online": True, "fw": "1.2.3", "t": now, "synced": True})
    col.handle(_msg(wire.topic(DEV, "status"), status))
    col.handle(_readings(DEV, 100, 30, now - 86400))
    assert col.flush()
    assert len(influx.points("air")) == 30
    assert len(influx.points("status")) == 1  # only the pre-written one
    dead = list(DeadLetters(col.cfg.dlq_dir).entries())
    assert [e.reason for e in dead] == ["influx_rejected"]
    assert dead[0].payload.decode().startswith(f"status,device={DEV} ")
    assert "field type conflict" in dead[0].detail
    assert col.metrics.get("kerbside_rejected_total", reason="influx_rejected") == 1
    assert col.metrics.get("kerbside_lines_written_total") == 30


def _gaps(influx) -> list[dict]:  # type: ignore[no-untyped-def]
    out = []
    for s in influx.query('SELECT * FROM "kerbside_gaps"'):
        out += [dict(zip(s["columns"], row, strict=True)) for row in s["values"]]
    return out


def test_gaps_recorded_and_updated_by_backfill_across_restarts(make, influx) -> None:  # type: ignore[no-untyped-def]
    t_base = int(time.time()) - 86400
    col = make()
    col.handle(_readings(DEV, 0, 10, t_base))
    col.handle(_readings(DEV, 20, 10, t_base))  # 10..19 missing
    assert col.flush()
    gaps = _gaps(influx)
    assert len(gaps) == 1
    g = gaps[0]
    assert (g["first_seq"], g["last_seq"], g["missing"], g["period"]) == (10, 19, 10, PERIOD)
    assert g["time"] == (t_base + 10 * PERIOD) * 10**9
    assert g["device"] == DEV
    # The collector restarts: the open gap must survive in the state file.
    col = make()
    col.handle(_readings(DEV, 12, 3, t_base))  # backlog arrives out of order
    assert col.flush()
    assert [(x["missing"], x["time"]) for x in _gaps(influx)] == [(7, g["time"])]
    col = make()
    col.handle(_readings(DEV, 10, 2, t_base))
    col.handle(_readings(DEV, 15, 5, t_base))
    col.handle(_readings(DEV, 0, 10, t_base))  # a replay: duplicates, not a gap change
    assert col.flush()
    assert [x["missing"] for x in _gaps(influx)] == [0]
    assert col.tracker.duplicates == 10
    assert col.tracker.open_gaps() == 0
    assert len(influx.points("air")) == 30


def test_registry_tags_and_rejections(make, influx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg = tmp_path / "registry.json"
    with Registry(reg).edit() as devices:
        devices["0000000a"] = Device(id="0000000a", kit="air", site="townhall", zone="lez")
        devices["0000000b"] = Device(id="0000000b", kit="air", site="old", status="decommissioned")
    col = make(registry__path=str(reg))
    t_base = int(time.time()) - 86400
    for dev in ("0000000a", "0000000b", "0000000c"):
        col.handle(_readings(dev, 0, 2, t_base))
    assert col.flush()
    points = influx.points("air")
    assert {p[1] for p in points} == {(("device", "0000000a"), ("kit", "air"), ("site", "townhall"), ("zone", "lez"))}
    reasons = {e.topic.split("/")[2]: e.reason for e in DeadLetters(col.cfg.dlq_dir).entries()}
    assert reasons == {"0000000b": "decommissioned", "0000000c": "unknown_device"}
    # A provisioned node is admitted as soon as the registry file changes, without a restart.
    with Registry(reg).edit() as devices:
        devices["0000000c"] = Device(id="0000000c", kit="air", site="market")
    col.devices.check_every_s = 0
    col.handle(_readings("0000000c", 2, 2, t_base))
    assert col.flush()
    assert any(("site", "market") in p[1] for p in influx.points("air"))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.4 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op < 0.6 and b:
            del b[rng.randrange(len(b)):]
        elif op < 0.8:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        else:
            b += rng.randbytes(rng.randint(1, 20))
    return bytes(b)


def test_fuzzed_payloads_never_crash_and_are_counted(make, influx, vectors) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(11)
    col = make()
    col.clock = lambda: float(vectors[0]["now"])
    seeds = [(v["topic"], bytes.fromhex(v["payload_hex"])) for v in vectors if v["valid"]]
    topics = [t for t, _ in seeds] + ["kerbside/v1/00c0ffee/readings", "kerbside/v1/zz/readings", "x"]
    n = 10_000
    for i in range(n):
        if rng.random() < 0.2:
            topic, payload = rng.choice(topics), rng.randbytes(rng.randint(0, 64))
        else:
            topic, payload = rng.choice(seeds)
            payload = _mutate(rng, payload)
        col.handle(_msg(topic, payload))
        if i % 1000 == 999:
            assert col.flush()
    assert col.flush()
    rejected = col.metrics.total("kerbside_rejected_total")
    accepted = sum(col.metrics.get("kerbside_messages_total", kind=k) for k in ("readings", "status", "ack", "invalid"))
    assert accepted == n
    assert col.metrics.get("kerbside_internal_errors_total") == 0
    dead = list(DeadLetters(col.cfg.dlq_dir).entries())
    assert len(dead) == rejected
    assert 0 < rejected < n
    assert all(e.reason != "influx_rejected" for e in dead), [e.detail for e in dead if e.reason == "influx_rejected"][:3]
    json.dumps(col.health()[1])


def test_unsynced_readings_go_to_their_retention_policy(make, influx) -> None:  # type: ignore[no-untyped-def]
    influx.query(f'CREATE RETENTION POLICY "unsynced" ON "{influx.db}" DURATION INF REPLICATION 1', post=True)
    col = make(influx__unsynced_rp="unsynced")
    payload = wire.encode_readings(bytes.fromhex(DEV), 7, 2, False, 1, 5000, PERIOD, 6, [(6, [1, 2, 3, 4, 5, 10000])] * 4)
    col.handle(_msg(wire.topic(DEV, "readings"), payload))
    col.handle(_readings(DEV, 0, 2, int(time.time()) - 86400))
    assert col.flush()
    rows = influx.query('SELECT "seq" FROM "unsynced"."air_unsynced"')[0]["values"]
    assert [(t, s) for t, s in rows] == [((5000 + i * PERIOD) * 10**9, 7 + i) for i in range(4)]
    assert influx.query('SELECT * FROM "air_unsynced"') == []  # nothing in the default policy
    assert len(influx.points("air")) == 2
