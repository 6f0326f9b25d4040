"""A stand-in NGSI-LD broker on loopback for the export tests: upsert batches and temporal entities."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Broker:
    """A stand-in NGSI-LD broker on 127.0.0.1 that records upsert batches and temporal entities (or fails on demand)."""

    def __init__(self, status: int = 204) -> None:
        self.batches: list[list[dict]] = []
        self.content_types: list[str] = []
        self.temporal: list[dict] = []
        broker = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/ngsi-ld/v1/entityOperations/upsert":
                    broker.batches.append(json.loads(body))
                    broker.content_types.append(self.headers["Content-Type"])
                    self.send_response(status)
                elif self.path == "/ngsi-ld/v1/temporal/entities/":
                    broker.temporal.append(json.loads(body))
                    broker.content_types.append(self.headers["Content-Type"])
                    self.send_response(201 if status == 204 else status)
                else:
                    self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Broker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
