"""Prometheus /metrics and a JSON /healthz, served from a small thread on loopback by default.

Hand-written text exposition (a few counters and gauges) rather than a client
library: the collector's numbers live in its own objects and are read at
scrape time, so there is no second copy to keep in sync.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.help: dict[str, tuple[str, str]] = {}

    def describe(self, name: str, kind: str, text: str) -> None:
        self.help[name] = (kind, text)

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        with self.lock:
            key = (name, tuple(sorted(labels.items())))
            self.counters[key] = self.counters.get(key, 0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        with self.lock:
            self.gauges[name, tuple(sorted(labels.items()))] = value

    def get(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            return self.counters.get(key, self.gauges.get(key, 0))

    def total(self, name: str) -> float:
        with self.lock:
            return sum(v for (n, _), v in self.counters.items() if n == name)

    def render(self) -> str:
        with self.lock:
            rows = [(n, lab, v) for (n, lab), v in self.counters.items()] + [(n, lab, v) for (n, lab), v in self.gauges.items()]
        rows.sort()
        out, seen = [], set()
        for name, labels, value in rows:
            if name not in seen:
                seen.add(name)
                kind, text = self.help.get(name, ("untyped", ""))
                out.append(f"# HELP {name} {text}")
                out.append(f"# TYPE {name} {kind}")
            lab = ",".join(f'{k}="{v}"' for k, v in labels)
            out.append(f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}")
        return "\n".join(out) + "\n"


def serve(host: str, port: int, metrics: Callable[[], str],
          health: Callable[[], tuple[bool, dict[str, Any]]]) -> ThreadingHTTPServer:
    """Start the server in a daemon thread; health() returns (ok, details) and ok=False answers 503."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                body, ctype, code = metrics().encode(), "text/plain; version=0.0.4", 200
            elif self.path.split("?")[0] == "/healthz":
                ok, details = health()
                body, ctype, code = json.dumps(details, indent=1).encode(), "application/json", 200 if ok else 503
            else:
                body, ctype, code = b"try /metrics or /healthz\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
