"""The fleet view's rules, in memory: statuses, problems, filters, the fleet-health metrics, the operator credential."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kerbside.collector import fleet
from kerbside.collector.fleet import Current, Data, NodeStatus, observe
from kerbside.collector.fleet_web import FleetView, routes
from kerbside.collector.metrics import Request, serve
from kerbside.collector.service import Collector
from kerbside.core.errors import ConfigError
from kerbside.core.registry import Device, Registry
from kerbside.core.settings import Config, is_loopback
from kerbside.devstack import free_port

NOW = 1_800_000_000.0
AIR = Device("0000a001", "air", "Ring 1", "lez", 48.2, 16.37)
TRAFFIC = Device("0000b001", "traffic", "Ring 2", "outside", 48.21, 16.38)


def status(online: bool = True, **fields: object) -> dict[str, object]:
    return {"online": online, "fw": "0.2.0", "config": 3, "rssi": -60, "buffered": 0, "dropped": 0, "boot": 1, **fields}


def test_a_status_is_merged_into_what_was_known_and_since_moves_only_on_a_change() -> None:
    st: dict[str, NodeStatus] = {}
    observe(st, "d", True, status(heap=50000), True, NOW, retained=True)
    assert st["d"].since is None, "learned from a retained copy: when it came online is not known"
    observe(st, "d", True, status(heap=48000), True, NOW + 300, retained=False)
    assert st["d"].since is None and st["d"].seen == NOW + 300 and st["d"].get("heap") == 48000
    observe(st, "d", False, {"online": False}, False, NOW + 400, retained=False)  # the last will
    s = st["d"]
    assert (s.online, s.since, s.get("fw"), s.get("heap"), s.synced) == (False, NOW + 400, "0.2.0", 48000, True)
    observe(st, "d", True, status(), True, NOW + 500, retained=False)
    assert (st["d"].online, st["d"].since) == (True, NOW + 500)


def test_sensor_errors_count_only_while_they_rise_within_a_boot() -> None:
    st: dict[str, NodeStatus] = {}
    observe(st, "d", True, status(health_pm_err=4, health_th_err=0), True, NOW, retained=False)
    assert st["d"].errors_rising == ()
    observe(st, "d", True, status(health_pm_err=9, health_th_err=0), True, NOW + 300, retained=False)
    assert st["d"].errors_rising == ("health_pm_err",)
    probs = fleet.status_problems("air", st["d"], Current("0.2.0", {"air": 3}), NOW + 300)
    assert [p.text for p in probs] == ["PM sensor: 9 frame/CRC errors since boot, rising"]
    observe(st, "d", True, status(health_pm_err=9, health_th_err=0), True, NOW + 600, retained=False)
    assert st["d"].errors_rising == ()
    observe(st, "d", True, status(health_pm_err=12, boot=2), True, NOW + 900, retained=False)
    assert st["d"].errors_rising == (), "a reboot restarts the counters: no comparison across boots"


def test_status_problems_name_what_to_look_at() -> None:
    cur = Current.of([("air", NodeStatus(True, NOW, None, True, status(fw="0.10.0", config=5))),
                      ("air", NodeStatus(True, NOW, None, True, status(fw="0.9.1", config=4))),
                      ("traffic", NodeStatus(True, NOW, None, True, status(fw="0.9.1", config=2)))])
    assert (cur.fw, cur.config) == ("0.10.0", {"air": 5, "traffic": 2}), "versions compare as numbers"
    bad = NodeStatus(False, NOW, NOW - 7200, True, status(fw="0.9.1", config=4, dropped=12, buffered=400,
                                                          health_laser_h=7300))
    assert [(p.code, p.text) for p in fleet.status_problems("air", bad, cur, NOW)] == [
        ("offline", "offline for 2 h"),
        ("dropping", "dropped 12 readings: its buffer was full (oldest first)"),
        ("backlog", "400 readings buffered, not yet sent"),
        ("sensor", "PM laser at 7300 h of ~8000 h: plan a replacement"),
        ("firmware", "firmware 0.9.1, the fleet's newest is 0.10.0"),
        ("config", "config v4, other air nodes have v5")]
    unsynced = NodeStatus(True, NOW, None, False, status(fw="0.10.0", config=5))
    assert [p.code for p in fleet.status_problems("air", unsynced, cur, NOW)] == ["clock"]
    assert [p.code for p in fleet.status_problems("air", None, cur, NOW)] == ["unseen"]


def test_a_row_judges_capture_sensors_and_gaps_from_influx_and_a_new_node_on_its_own_hours() -> None:
    start, end = fleet.window(NOW)
    assert end == int(NOW) // 3600 * 3600 and end - start == 24 * 3600
    counts = [60] * 24
    data = Data(counts, [60.0] * 20 + [30.0] * 4, {"pm25": 300, "temp": 1440}, last_reading=NOW - 30, gaps_open=1,
                missing=7)
    st = NodeStatus(True, NOW, None, True, status())
    row = fleet.node_row(AIR, st, data, Current("0.2.0", {"air": 3}), NOW, start, 60.0)
    assert row["capture"] == round((20 * 60 + 4 * 30) / (24 * 60), 4) and row["readings"] == 1440
    assert row["hourly"]["capture"][-1] == 0.5 and row["hourly"]["n"] == counts
    assert [p["text"] for p in row["problems"]] == ["PM sensor: no PM2.5 in 1140 of 1440 readings (24 h)",
                                                    "1 open gap, 7 readings missing"]
    # installed three hours before the window's end: judged on those hours, not on 24
    new = Device("0000a002", "air", "Ring 3", created=dt.datetime.fromtimestamp(end - 3 * 3600, dt.UTC).isoformat())
    fresh = Data([0] * 21 + [60] * 3, [0.0] * 21 + [60.0] * 3, {"pm25": 180, "temp": 180})
    row = fleet.node_row(new, st, fresh, Current("0.2.0", {"air": 3}), NOW, start, 60.0)
    assert row["capture"] == 1.0 and row["problems"] == []
    low = Data([0] * 24, [0.0] * 24)
    row = fleet.node_row(AIR, st, low, Current("0.2.0", {"air": 3}), NOW, start, 60.0)
    assert [p["code"] for p in row["problems"]] == ["capture"]


def test_filters_and_sorting_are_one_function() -> None:
    rows = [{"id": "a", "site": "s1", "zone": "lez", "state": "online", "rssi": -70, "problems": []},
            {"id": "b", "site": "s2", "zone": "out", "state": "offline", "rssi": -50, "problems": [{"code": "offline"}]},
            {"id": "c", "site": "s3", "zone": "lez", "state": "unseen", "rssi": None,
             "problems": [{"code": "unseen"}, {"code": "x"}]}]
    assert [r["id"] for r in fleet.select(rows)] == ["c", "b", "a"], "most problems first"
    assert [r["id"] for r in fleet.select(rows, offline=True)] == ["c", "b"]
    assert [r["id"] for r in fleet.select(rows, zone="lez", problems=True)] == ["c"]
    assert [r["id"] for r in fleet.select(rows, sort="rssi")] == ["a", "b", "c"], "unknown values last"
    assert [r["id"] for r in fleet.select(rows, sort="rssi", descending=True)] == ["b", "a", "c"]
    with pytest.raises(ValueError, match="sort by one of"):
        fleet.select(rows, sort="password_hash")


def _view(tmp_path: Path, statuses: dict[str, NodeStatus]) -> FleetView:
    reg = Registry(tmp_path / "registry.json")
    with reg.edit() as devices:
        devices.update({AIR.id: AIR, TRAFFIC.id: TRAFFIC,
                        "0000a009": Device("0000a009", "air", "gone", status="decommissioned")})
    cfg = Config()
    cfg.influx.url = "http://127.0.0.1:9"  # nothing listens: the view says so and shows what memory holds
    cfg.influx.timeout_s = 1.0
    return FleetView(cfg, statuses, reg.load, gapped=lambda: {TRAFFIC.id, "ffffffff"}, clock=lambda: NOW)


def test_the_metrics_count_the_registered_fleet_by_the_same_rules(tmp_path: Path) -> None:
    statuses: dict[str, NodeStatus] = {}
    observe(statuses, AIR.id, False, status(dropped=5, buffered=30), True, NOW - 60, retained=False)
    observe(statuses, "0000dead", True, status(), True, NOW, retained=False)  # not registered: not in the fleet
    view = _view(tmp_path, statuses)
    try:
        c = view.counts()
        assert c == {"registered": 2, "online": 0, "offline": 1, "unseen": 1, "dropping": 1, "backlog": 1, "sensor": 0,
                     "outdated": 0, "gaps": 1, "buffered": 30, "dropped": 5}
        doc = view.view()
        assert doc["influx"]["ok"] is False and "cannot reach InfluxDB" in doc["influx"]["error"]
        assert [(n["id"], n["state"]) for n in doc["nodes"]] == [(AIR.id, "offline"), (TRAFFIC.id, "unseen")]
        assert "hourly" not in doc["nodes"][0], "no data rather than made-up zeros"
        code, _, body = routes(view)["/api/fleet"](Request.of("/api/fleet?sort=nope"))
        assert code == 400 and "sort by one of" in json.loads(body)["error"]
        code, _, body = routes(view)["/api/fleet/node"](Request.of("/api/fleet/node?id=0000a009"))
        assert code == 404, "a decommissioned node is not in the fleet"
    finally:
        view.close()


def test_every_page_asks_for_the_operator_credential_when_there_is_one(tmp_path: Path) -> None:
    view = _view(tmp_path, {})
    port = free_port()
    server = serve("127.0.0.1", port, {"/metrics": lambda _r: (200, "text/plain", b"x 1\n"), **routes(view)},
                   auth=("operator", "s3cret:with colon"))
    base = f"http://127.0.0.1:{port}"
    good = "Basic " + base64.b64encode(b"operator:s3cret:with colon").decode()
    bad = "Basic " + base64.b64encode(b"operator:guess").decode()
    try:
        for path in ("/metrics", "/fleet", "/fleet.js", "/api/fleet", "/nowhere"):
            for header in (None, bad, "Bearer x", "Basic !!!"):
                req = urllib.request.Request(base + path, headers={"Authorization": header} if header else {})
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(req, timeout=10)
                assert e.value.code == 401 and e.value.headers["WWW-Authenticate"].startswith("Basic realm=")
        with urllib.request.urlopen(urllib.request.Request(base + "/fleet", headers={"Authorization": good}), timeout=10) as r:
            page = r.read().decode()
            assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert '<script src="/fleet.js" defer></script>' in page and "http" not in page.replace('"http://', "")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(base + "/api/fleet", data=b"{}", headers={"Authorization": good}),
                                   timeout=10)
        assert e.value.code == 501, "read-only: GET alone"
    finally:
        server.shutdown()
        server.server_close()
        view.close()


def test_the_page_loads_nothing_from_elsewhere_and_inserts_values_as_text() -> None:
    web = Path(fleet.__file__).resolve().parent / "web"
    js = (web / "fleet.js").read_text()
    html = (web / "fleet.html").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js
    assert "http://" not in html and "https://" not in html
    assert [u for u in re.findall(r"https?://[^\s\"']+", js) if u != "http://www.w3.org/2000/svg"] == []


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
                                                ("127.0.0.2", True), ("0.0.0.0", False), ("", False), ("10.0.0.5", False),
                                                ("collector.city.example", False)])
def test_loopback_is_what_only_this_machine_reaches(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_collector_refuses_to_serve_beyond_loopback_without_the_credential(tmp_path: Path) -> None:
    cfg = Config()
    cfg.spool.dir = str(tmp_path / "spool")
    cfg.http.host = "0.0.0.0"
    with pytest.raises(ConfigError, match=r"http.host = '0.0.0.0' is not loopback: set http.password"):
        Collector(cfg)
    assert not (tmp_path / "spool").exists(), "refused before anything was created"
    cfg.http.port = 0  # no HTTP server at all: nothing to protect
    Collector(cfg).spool.close()
