"""Every wire vector through mosquitto_pub and the real collector: valid ones land as their lines, invalid ones in the DLQ."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest
from kc_helpers import InProcess, make_config, mosquitto_pub, wait_for  # type: ignore[import-not-found]

from influx_helpers import as_point  # type: ignore[import-not-found]
from kerbside.collector.dlq import DeadLetters

pytestmark = pytest.mark.services

# Topics outside the subscriptions (cmd, other versions) never reach the collector: the broker filters them.
SUBSCRIBED = re.compile(r"^kerbside/v1/[^/]+/(readings|status|ack)$")


def test_vectors_land_exactly(tmp_path: Path, broker, influx, influxd, vectors: list[dict]) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, broker, influxd.url, influx.db)
    now = vectors[0]["now"]
    delivered = [v for v in vectors if SUBSCRIBED.match(v["topic"])]
    assert len(vectors) - len(delivered) == 2
    invalid = [v for v in delivered if not v["valid"]]
    with InProcess(cfg, clock=lambda: float(now)) as col:
        for i, v in enumerate(delivered, 1):
            mosquitto_pub(broker, v["topic"], bytes.fromhex(v["payload_hex"]))
            wait_for(lambda i=i: col.metrics.total("kerbside_messages_total") == i and col.idle(), v["name"], 10)
            if not v["valid"]:
                continue
            # Vectors reuse devices and timestamps, so each one is checked alone and then cleared.
            expected = {as_point(line) for line in v["lines"]}
            got = set().union(*(influx.points(m) for m in {p[0] for p in expected}))
            assert got == expected, v["name"]
            influx.query("DROP SERIES FROM /.*/", post=True)
    dead = list(DeadLetters(cfg.dlq_dir).entries())
    assert Counter(e.reason for e in dead) == Counter(v["reason"] for v in invalid)
    by_payload = {(e.topic, e.sha256, e.size): e.reason for e in dead}  # an oversize payload keeps only its start
    for v in invalid:
        payload = bytes.fromhex(v["payload_hex"])
        assert by_payload[v["topic"], hashlib.sha256(payload).hexdigest(), len(payload)] == v["reason"], v["name"]
    for reason, n in Counter(v["reason"] for v in invalid).items():
        assert col.metrics.get("kerbside_rejected_total", reason=reason) == n
