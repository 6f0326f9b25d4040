"""/metrics: prometheus_client renders the collector's live values exactly, and the dev tools parse them back."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kerbside.collector.metrics import Metrics, health_route, metrics_route, serve
from kerbside.collector.service import Collector
from kerbside.core.settings import Config
from kerbside.devstack import free_port, parse_metrics, scrape_metrics

ROOT = Path(__file__).resolve().parents[2]


def test_a_counter_past_a_million_renders_every_digit_and_parses_back() -> None:
    m = Metrics()
    m.describe("kerbside_readings_total", "counter", "valid readings decoded")
    m.inc("kerbside_readings_total", 12_345_678)
    m.inc("kerbside_readings_total")
    text = m.render().decode()
    assert "kerbside_readings_total 1.2345679e+07\n" in text  # `%g` said 1.23457e+07 here, and stopped moving
    assert parse_metrics(text)["kerbside_readings_total"] == 12_345_679
    m.inc("kerbside_readings_total")
    assert parse_metrics(m.render().decode())["kerbside_readings_total"] == 12_345_680


def test_help_type_labels_and_values_read_at_scrape_time() -> None:
    m = Metrics()
    held = {"bytes": 0}
    m.describe("kerbside_rejected_total", "counter", "messages and lines dead-lettered, by stable reason code", ("reason",))
    m.describe("kerbside_spool_bytes", "gauge", "bytes waiting in the spool", read=lambda: held["bytes"])
    m.describe("kerbside_influx_up", "gauge", "1 when the last InfluxDB write succeeded")
    text = m.render().decode()
    assert "# HELP kerbside_rejected_total messages and lines dead-lettered, by stable reason code\n" in text
    assert "# TYPE kerbside_rejected_total counter\n" in text and "# TYPE kerbside_spool_bytes gauge\n" in text
    # an unlabelled series is there from the start; a labelled one appears with its first label value
    assert parse_metrics(text) == {"kerbside_spool_bytes": 0, "kerbside_influx_up": 0}
    m.inc("kerbside_rejected_total", reason="bad_crc")
    m.inc("kerbside_rejected_total", 2, reason="unknown_device")
    held["bytes"] = 4096  # no copy to update: the owner's value is read when scraped
    m.set("kerbside_influx_up", 1)
    got = parse_metrics(m.render().decode())
    assert got == {'kerbside_rejected_total{reason="bad_crc"}': 1, 'kerbside_rejected_total{reason="unknown_device"}': 2,
                   "kerbside_rejected_total": 3, "kerbside_spool_bytes": 4096, "kerbside_influx_up": 1}
    assert (m.get("kerbside_rejected_total", reason="unknown_device"), m.total("kerbside_rejected_total")) == (2, 3)
    assert m.get("kerbside_spool_bytes") == 4096


def test_label_values_are_escaped_and_round_trip() -> None:
    m = Metrics()
    m.describe("kerbside_device_online", "gauge", "online/offline view", ("device",))
    m.set("kerbside_device_online", 1, device='we"ird\\id\nx')
    assert parse_metrics(m.render().decode()) == {'kerbside_device_online{device="we"ird\\id\nx"}': 1,
                                                  "kerbside_device_online": 1}


def test_describe_refuses_what_prometheus_cannot_show() -> None:
    m = Metrics()
    with pytest.raises(ValueError, match="counter or gauge"):
        m.describe("kerbside_x", "histogram", "")
    with pytest.raises(ValueError, match="no labels"):
        m.describe("kerbside_y", "gauge", "", ("device",), read=lambda: 1)


def test_the_collector_exposes_every_metric_the_docs_name(tmp_path: Path) -> None:
    cfg = Config()
    cfg.spool.dir = str(tmp_path / "spool")
    col = Collector(cfg)  # nothing connects until run()
    try:
        col.metrics.inc("kerbside_rejected_total", reason="bad_crc")
        col.metrics.set("kerbside_device_online", 1, device="000000a1")
        col.tracker.observe("d", 0, 1, 1000, 60, {})
        col.tracker.observe("d", 5, 1, 1300, 60, {})  # a gap of 4
        col.tracker.observe("d", 5, 1, 1300, 60, {})  # a duplicate
        text = col.render_metrics().decode()
        got = parse_metrics(text)
        doc = (ROOT / "docs" / "collector.md").read_text()
        table = "\n".join(line for line in doc.split("### Metrics", 1)[1].splitlines() if line.startswith("| `"))
        assert set(re.findall(r"`(kerbside_[a-z_]+)", table)) == set(col.metrics.help), "docs/collector.md's table"
        assert set(re.findall(r"\bkerbside_[a-z_]+_(?:total|bytes|online|blocked|conflict)\b", doc)) <= set(col.metrics.help)
        assert (got["kerbside_gaps_open"], got["kerbside_readings_missing"], got["kerbside_duplicates_total"],
                got["kerbside_gaps_opened_total"]) == (1, 4, 1, 1)
        assert got["kerbside_spool_max_bytes"] == cfg.spool.max_bytes and got["kerbside_spool_batches"] == 0
        assert len(re.findall(r"^# HELP kerbside_", text, re.M)) == len(col.metrics.help) == 43
        assert (got["kerbside_mqtt_connected"], got["kerbside_mqtt_subscribed"], got["kerbside_influx_up"]) == (0, 0, 0)
        col.source.connected = col.source.subscribed = col.influx_up = True  # what the callbacks and the first write set
        got = parse_metrics(col.render_metrics().decode())
        assert (got["kerbside_mqtt_connected"], got["kerbside_mqtt_subscribed"], got["kerbside_influx_up"]) == (1, 1, 1)
    finally:
        col.spool.close()
        col.writer.close()


def test_served_over_http_with_the_exposition_content_type_and_json_health() -> None:
    m = Metrics()
    m.describe("kerbside_flushes_total", "counter", "batches made durable")
    m.inc("kerbside_flushes_total", 3)
    health = {"ok": True}
    port = free_port()
    server = serve("127.0.0.1", port, {"/metrics": metrics_route(m.render),
                                       "/healthz": health_route(lambda: (bool(health["ok"]), dict(health)))})
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert scrape_metrics(port) == {"kerbside_flushes_total": 3}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert (r.status, json.loads(r.read())) == (200, {"ok": True})
        health["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert e.value.code == 503 and json.loads(e.value.read()) == {"ok": False}
    finally:
        server.shutdown()
        server.server_close()
