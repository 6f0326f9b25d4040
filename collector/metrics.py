"""Prometheus /metrics and a JSON /healthz, served from a small thread on loopback by default.

The collector's numbers live in its own objects (this Metrics for what it
counts, the spool and the sequence tracker for what they hold) and are read at
scrape time, so there is no second copy to keep in sync. prometheus_client
only renders them: a custom collector turns the live values into metric
families on each scrape, and its exposition writes every digit (a hand-written
`%g` stopped moving counters past a million, which breaks rate() and increase()).

The HTTP server is a table of routes ({path: handler}); /metrics and /healthz
are two of them (health itself is computed in collector/health.py), and more
pages are more routes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector, CollectorRegistry

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """Counters and gauges the collector's threads update, plus values read from their owners at scrape time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[tuple[str, Labels], float] = {}
        self.help: dict[str, tuple[str, str, tuple[str, ...]]] = {}
        self.readers: dict[str, Callable[[], float]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Families(self))

    def describe(self, name: str, kind: str, text: str, labels: tuple[str, ...] = (),
                 read: Callable[[], float] | None = None) -> None:
        """kind is "counter" or "gauge"; with `read`, the value is whatever read() returns at scrape time.

        A name without labels is exposed from the start (0 until it moves: increase() needs the first
        value); one with labels shows a series per label value seen.
        """
        if kind not in ("counter", "gauge"):
            raise ValueError(f"{name}: kind must be counter or gauge, not {kind!r}")
        if read is not None and labels:
            raise ValueError(f"{name}: a value read at scrape time has no labels")
        self.help[name] = (kind, text, tuple(sorted(labels)))
        if read is not None:
            self.readers[name] = read

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            self.values[key] = self.values.get(key, 0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        with self.lock:
            self.values[name, tuple(sorted(labels.items()))] = value

    def get(self, name: str, **labels: str) -> float:
        if name in self.readers and not labels:
            return float(self.readers[name]())
        with self.lock:
            return self.values.get((name, tuple(sorted(labels.items()))), 0)

    def total(self, name: str) -> float:
        if name in self.readers:
            return float(self.readers[name]())
        with self.lock:
            return sum(v for (n, _), v in self.values.items() if n == name)

    def render(self) -> bytes:
        """The Prometheus text exposition (version 0.0.4) of every described metric."""
        return generate_latest(self.registry)


class _Families(Collector):
    """prometheus_client's view of a Metrics: one family per described name, built from the live values."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        read = {name: float(fn()) for name, fn in m.readers.items()}
        with m.lock:
            samples: dict[str, list[tuple[Labels, float]]] = {}
            for (name, labels), value in sorted(m.values.items()):
                samples.setdefault(name, []).append((labels, value))
        for name, (kind, text, keys) in sorted(m.help.items()):
            rows = [((), read[name])] if name in read else samples.get(name, [] if keys else [((), 0.0)])
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, text, labels=keys)
            for labels, value in rows:
                if tuple(k for k, _ in labels) == keys:  # a stray label set must not break the whole scrape
                    family.add_metric([v for _, v in labels], value)
            yield family


Route = Callable[[], tuple[int, str, bytes]]
"""An HTTP GET handler: returns (status, content type, body)."""


def metrics_route(render: Callable[[], bytes]) -> Route:
    return lambda: (200, CONTENT_TYPE_PLAIN_0_0_4, render())


def health_route(report: Callable[[], tuple[bool, dict[str, Any]]]) -> Route:
    """ok answers 200, anything else 503 (what load balancers and systemd watchdogs read); the body says why."""
    def route() -> tuple[int, str, bytes]:
        ok, details = report()
        return 200 if ok else 503, "application/json", json.dumps(details, indent=1).encode()
    return route


def serve(host: str, port: int, routes: Mapping[str, Route],
          wrap: Callable[[Callable[[], None]], Callable[[], None]] = lambda run: run) -> ThreadingHTTPServer:
    """Serve `routes` ({path: handler}) from a daemon thread; `wrap` wraps the thread's run function (the collector
    watches its threads with it). More pages are more routes."""
    table = dict(routes)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = table.get(self.path.split("?")[0])
            if route is None:
                code, ctype, body = 404, "text/plain", f"try {' or '.join(sorted(table))}\n".encode()
            else:
                code, ctype, body = route()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=wrap(server.serve_forever), name="http", daemon=True).start()
    return server
