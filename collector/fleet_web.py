"""The fleet page and its JSON API, served by the collector's HTTP server (routes added to collector.routes).

    /fleet              the page: table, map, capture heatmap, node detail (static files in collector/web/)
    /api/fleet          every node as the table shows it; ?offline=1 &zone=Z &problems=1 &sort=KEY &desc=1
    /api/fleet/node     one node: its row, 24 h of its main channels and capture, ?id=ID [&after=UNIX]
                        for its readings since then (what `kerbside fleet watch` polls)

Read-only (GET), computed when asked: the status part from memory, the rest
from a fixed number of InfluxDB queries (collector/fleet_queries.py). The page
is a small static file over the JSON API: no build step, nothing loaded from
elsewhere (the Content-Security-Policy says 'self'), and every value from the
registry or a node is inserted as text, never as markup.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kerbside.collector import fleet, fleet_queries
from kerbside.collector.fleet import Current, Data, NodeStatus
from kerbside.collector.influx import client_for
from kerbside.collector.metrics import Request, Response, Route
from kerbside.core.influx import InfluxError
from kerbside.core.registry import Device
from kerbside.core.settings import Config

log = logging.getLogger("kerbside.collector.fleet")

WEB = Path(__file__).resolve().parent / "web"
STATIC = {"/fleet": ("fleet.html", "text/html; charset=utf-8"), "/fleet.js": ("fleet.js", "text/javascript; charset=utf-8"),
          "/fleet.css": ("fleet.css", "text/css; charset=utf-8")}
JSON = "application/json"
COUNTS_TTL_S = 1.0
"""The metrics' fleet counts are computed at most this often (each scrape reads several of them)."""


class FleetView:
    """The fleet as the collector sees it: statuses from memory, the registry, InfluxDB when asked."""

    def __init__(self, cfg: Config, statuses: dict[str, NodeStatus], registry: Callable[[], dict[str, Device] | None],
                 gapped: Callable[[], set[str]] = set, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.statuses = statuses
        self.registry = registry
        self.gapped = gapped
        self.clock = clock
        self.client = client_for(cfg.influx)
        self._counts: tuple[float, dict[str, int]] = (-1e9, {})
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def devices(self) -> dict[str, Device]:
        """The fleet: the registry's active nodes; without a registry, every device that sent a status."""
        known = self.registry()
        if known is not None:
            return {k: d for k, d in known.items() if d.active}
        out = {}
        for dev, st in list(self.statuses.items()):
            kit = {1: "air", 2: "traffic"}.get(st.get("kit"), "")
            out[dev] = Device(dev, kit, "")
        return out

    def _current(self, devices: dict[str, Device]) -> Current:
        return Current.of((d.kit, self.statuses.get(k)) for k, d in devices.items())

    @property
    def per_hour(self) -> float:
        return 3600 / self.cfg.node.period

    # --- the table -----------------------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        """Every node with its status, data and problems (unfiltered, sorted by problems)."""
        now = self.clock()
        start, end = fleet.window(now)
        devices = self.devices()
        current = self._current(devices)
        influx: dict[str, Any] = {"ok": True}
        data: dict[str, Data] | None
        t = time.monotonic()
        try:
            data = fleet_queries.fleet_data(self.client, self.cfg.influx.rp, start, end, now)
        except InfluxError as e:
            log.warning("fleet view without InfluxDB: %s", e)
            data, influx = None, {"ok": False, "error": str(e)}
        influx["query_s"] = round(time.monotonic() - t, 3)
        empty = Data([0] * fleet.WINDOW_H, [0.0] * fleet.WINDOW_H)
        rows = [fleet.node_row(d, self.statuses.get(k), None if data is None else data.get(k, empty), current, now, start,
                               self.per_hour) for k, d in devices.items()]
        rows = fleet.select(rows)
        return {"generated": now, "window": {"start": start, "end": end, "hours": list(range(start, end, fleet.HOUR))},
                "period": self.cfg.node.period, "current": {"fw": current.fw, "config": current.config},
                "influx": influx, "summary": fleet.summary(rows), "nodes": rows}

    def node(self, device: str, after: float | None = None) -> dict[str, Any] | None:
        """One node's row, its last 24 h in 15-minute steps, and its readings after `after`."""
        devices = self.devices()
        d = devices.get(device)
        if d is None:
            return None
        now = self.clock()
        start, end = fleet.window(now)
        rp = self.cfg.influx.rp
        out: dict[str, Any] = {"generated": now, "influx": {"ok": True}}
        try:
            all_data = fleet_queries.fleet_data(self.client, rp, start, end, now)
            data = all_data.get(device, Data([0] * fleet.WINDOW_H, [0.0] * fleet.WINDOW_H))
            out["series"] = fleet_queries.series(self.client, rp, device, d.kit, start, end)
            out["recent"] = fleet_queries.recent(self.client, rp, device, d.kit, after if after is not None else now - 3600)
        except InfluxError as e:
            data, out["influx"] = None, {"ok": False, "error": str(e)}
        out["node"] = fleet.node_row(d, self.statuses.get(device), data, self._current(devices), now, start, self.per_hour)
        out["channels"] = list(fleet_queries.MAIN.get(d.kit, fleet_queries.MAIN["air"]))
        return out

    # --- the metrics ---------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Fleet health from memory only (statuses, registry, the collector's own gap tracking): cheap enough for
        every scrape, and the same rules as the page's."""
        with self._lock:
            at, cached = self._counts
            if time.monotonic() - at < COUNTS_TTL_S:
                return cached
            now = self.clock()
            devices = self.devices()
            current = self._current(devices)
            out = {"registered": len(devices), "online": 0, "offline": 0, "unseen": 0, "dropping": 0, "backlog": 0,
                   "sensor": 0, "outdated": 0, "gaps": len(self.gapped() & set(devices)), "buffered": 0, "dropped": 0}
            for k, d in devices.items():
                st = self.statuses.get(k)
                codes = {p.code for p in fleet.status_problems(d.kit, st, current, now)}
                out["unseen" if st is None else "online" if st.online else "offline"] += 1
                for code in ("dropping", "backlog", "sensor"):
                    out[code] += code in codes
                out["outdated"] += bool(codes & {"firmware", "config"})
                if st is not None:
                    out["buffered"] += int(st.get("buffered") or 0)
                    out["dropped"] += int(st.get("dropped") or 0)
            self._counts = (time.monotonic(), out)
            return out

    def count(self, name: str) -> Callable[[], float]:
        return lambda: float(self.counts()[name])


METRICS = (
    ("kerbside_nodes_registered", "registered", "nodes in the fleet: active in the registry (without one: devices seen)"),
    ("kerbside_nodes_online", "online", "nodes of the fleet whose last status says online"),
    ("kerbside_nodes_offline", "offline", "nodes of the fleet whose last status says offline (or whose last will fired)"),
    ("kerbside_nodes_unseen", "unseen", "nodes of the fleet that never sent a status"),
    ("kerbside_nodes_dropping", "dropping", "nodes whose last status reports readings dropped (a full buffer: data lost)"),
    ("kerbside_nodes_backlog", "backlog", f"nodes with {fleet.BACKLOG} or more readings buffered, not yet sent"),
    ("kerbside_nodes_sensor_warning", "sensor", "nodes whose status shows sensor errors rising or a worn PM laser"),
    ("kerbside_nodes_outdated", "outdated", "nodes behind the fleet's newest firmware or their kit's config version"),
    ("kerbside_nodes_with_gaps", "gaps", "nodes with open sequence gaps (this collector's tracking)"),
    ("kerbside_nodes_readings_buffered", "buffered", "readings buffered on the fleet's nodes, from their last status"),
    ("kerbside_nodes_readings_dropped", "dropped", "readings the fleet's nodes dropped since their boot, from their last status"),
)
"""(metric, counts() key, help): the fleet-health gauges, read at scrape time."""


# --- routes ------------------------------------------------------------------------------------------


def _json(code: int, doc: Any) -> Response:
    return code, JSON, json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _flag(req: Request, name: str) -> bool:
    return req.query.get(name, "") not in ("", "0", "false", "no")


def _static(name: str, ctype: str) -> Route:
    body = (WEB / name).read_bytes()  # read once: the files ship with the package
    return lambda _req: (200, ctype, body)


def routes(view: FleetView) -> dict[str, Route]:
    def api_fleet(req: Request) -> Response:
        doc = view.view()
        try:
            doc["nodes"] = fleet.select(doc["nodes"], offline=_flag(req, "offline"), zone=req.query.get("zone") or None,
                                        problems=_flag(req, "problems"), sort=req.query.get("sort") or "problems",
                                        descending=_flag(req, "desc"))
        except ValueError as e:
            return _json(400, {"error": str(e)})
        return _json(200, doc)

    def api_node(req: Request) -> Response:
        device = req.query.get("id", "")
        try:
            after = float(req.query["after"]) if req.query.get("after") else None
        except ValueError:
            return _json(400, {"error": "after must be a unix time in seconds"})
        doc = view.node(device, after)
        if doc is None:
            return _json(404, {"error": f"{device!r} is not in the fleet (the registry's active nodes)"})
        return _json(200, doc)

    out: dict[str, Route] = {path: _static(name, ctype) for path, (name, ctype) in STATIC.items()}
    out["/api/fleet"] = api_fleet
    out["/api/fleet/node"] = api_node
    return out
