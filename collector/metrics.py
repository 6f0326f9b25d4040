"""Prometheus /metrics and a JSON /healthz, served from a small thread on loopback by default.

The collector's numbers live in its own objects (this Metrics for what it
counts, the spool and the sequence tracker for what they hold) and are read at
scrape time, so there is no second copy to keep in sync. prometheus_client
only renders them: a custom collector turns the live values into metric
families on each scrape, and its exposition writes every digit (a hand-written
`%g` stopped moving counters past a million, which breaks rate() and increase()).

The HTTP server is a table of routes ({path: handler}); /metrics and /healthz
are two of them (health itself is computed in collector/health.py), and more
pages are more routes (the fleet page: collector/fleet_web.py). It only reads:
GET alone is served. With a credential every route asks for it (HTTP basic
auth), Prometheus and the fleet page alike, so nothing is left open by a route
that forgot to check.
"""

from __future__ import annotations

import base64
import hmac
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Request:
    """What a route gets of an HTTP GET: its path and its query parameters (the last value of each)."""

    path: str
    query: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def of(target: str) -> Request:
        parts = urllib.parse.urlsplit(target)
        return Request(parts.path, dict(urllib.parse.parse_qsl(parts.query)))


Response = tuple[int, str, bytes]
"""(status, content type, body)."""
Route = Callable[[Request], Response]
"""An HTTP GET handler."""

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
}
"""Sent with every answer: the pages load nothing from elsewhere and nothing inline, and are never cached."""


def metrics_route(render: Callable[[], bytes]) -> Route:
    return lambda _req: (200, CONTENT_TYPE_PLAIN_0_0_4, render())


def health_route(report: Callable[[], tuple[bool, dict[str, Any]]]) -> Route:
    """ok answers 200, anything else 503 (what load balancers and systemd watchdogs read); the body says why."""
    def route(_req: Request) -> Response:
        ok, details = report()
        return 200 if ok else 503, "application/json", json.dumps(details, indent=1).encode()
    return route


def _authorized(header: str | None, user: str, password: str) -> bool:
    """HTTP basic auth, compared in constant time."""
    if not header or not header.startswith("Basic "):
        return False
    try:
        given = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return False
    name, _, secret = given.partition(":")
    return hmac.compare_digest(name.encode(), user.encode()) & hmac.compare_digest(secret.encode(), password.encode())


def serve(host: str, port: int, routes: Mapping[str, Route],
          wrap: Callable[[Callable[[], None]], Callable[[], None]] = lambda run: run,
          auth: tuple[str, str] | None = None) -> ThreadingHTTPServer:
    """Serve `routes` ({path: handler}) from a daemon thread; `wrap` wraps the thread's run function (the collector
    watches its threads with it). With `auth` (user, password) every request needs it. More pages are more routes."""
    table = dict(routes)

    class Handler(BaseHTTPRequestHandler):
        server_version = "kerbside"
        sys_version = ""

        def do_GET(self) -> None:
            req = Request.of(self.path)
            extra: dict[str, str] = {}
            if auth is not None and not _authorized(self.headers.get("Authorization"), *auth):
                code, ctype, body = 401, "text/plain", b"the operator credential is needed (http.user, http.password)\n"
                extra["WWW-Authenticate"] = 'Basic realm="kerbside", charset="UTF-8"'
            elif (route := table.get(req.path)) is None:
                code, ctype, body = 404, "text/plain", f"try {' or '.join(sorted(table))}\n".encode()
            else:
                code, ctype, body = route(req)
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in {**SECURITY_HEADERS, **extra}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=wrap(server.serve_forever), name="http", daemon=True).start()
    return server
