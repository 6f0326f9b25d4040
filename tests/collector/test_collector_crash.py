"""kill -9 the collector subprocess at random moments during a 50k-reading stream: every reading lands, none extra."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import pytest
from kc_helpers import (  # type: ignore[import-not-found]
    Publisher,
    expected_summary,
    make_config,
    make_stream,
    seq_summary,
    spawn,
    wait_for,
)

from kerbside.collector.dlq import DeadLetters

pytestmark = pytest.mark.services


def test_kill9_loses_nothing(tmp_path: Path, broker, influx, influxd) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, broker, influxd.url, influx.db)
    cfg.batch.max_messages = 50  # many small batches: more acks in flight when the kill lands
    msgs, seqs = make_stream(devices=5, total=50_000, seed=3)
    log = tmp_path / "collector.log"
    proc = spawn(cfg, log)
    rng = random.Random(7)
    pub = Publisher(broker)
    kills = 0
    try:
        # Pace the stream over a few seconds so that the kills land while messages are in flight.
        def publish() -> None:
            for i in range(0, len(msgs), 40):
                pub.publish_many(msgs[i:i + 40])
                time.sleep(0.02)

        t = threading.Thread(target=publish)
        t.start()
        while t.is_alive() or kills < 3:
            time.sleep(rng.uniform(0.3, 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
            proc = spawn(cfg, log)
        t.join()
        want = expected_summary(seqs)
        wait_for(lambda: seq_summary(influx) == want, "every reading in InfluxDB", 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        pub.close()
        if proc.poll() is None:
            proc.kill()
    assert kills >= 3
    assert seq_summary(influx) == want, log.read_text()[-3000:]
    assert list(DeadLetters(cfg.dlq_dir).entries()) == []
    # Redelivered messages are duplicates, never gaps: any gap record must have been fully recovered.
    for s in influx.query('SELECT "missing" FROM "kerbside_gaps"'):
        assert all(row[1] == 0 for row in s["values"]), s
