"""The InfluxDB writer: bisection against a real InfluxDB, and the v2 request shape against a recording server."""

from __future__ import annotations

import gzip
import math
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from kerbside.collector.influx import InfluxAuthError, InfluxDown, InfluxWriter
from kerbside.core.settings import InfluxConfig


@pytest.mark.services
def test_bisection_isolates_bad_lines_in_bounded_requests(influx, influxd) -> None:  # type: ignore[no-untyped-def]
    influx.write(["m,k=seed x=1i 1"])
    bad_at = {7, 50, 93}
    lines = [f'm,k={i} x="text" {1000 + i}' if i in bad_at else f"m,k={i} x={i}i {1000 + i}" for i in range(100)]
    w = InfluxWriter(InfluxConfig(url=influxd.url, db=influx.db))
    bad = w.write(lines)
    assert [line for line, _ in bad] == [lines[i] for i in sorted(bad_at)]
    assert all("field type conflict" in err for _, err in bad)
    assert len(influx.points("m")) == 1 + 100 - len(bad_at)
    assert w.requests <= 1 + 2 * len(bad_at) * math.ceil(math.log2(len(lines)))
    w.close()


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, dict[str, list[str]], dict[str, str], bytes]]] = []
    status = 204

    def do_POST(self) -> None:
        u = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.seen.append((u.path, urllib.parse.parse_qs(u.query), dict(self.headers), body))
        self.send_response(_Recorder.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder():  # type: ignore[no-untyped-def]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.seen, _Recorder.status = [], 204
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_v2_write_uses_bucket_org_token_and_gzip(recorder: str) -> None:
    w = InfluxWriter(InfluxConfig(url=recorder, api="v2", token="s3cret", org="city", bucket="kerbside"))
    assert w.write(["m x=1i 1", "m x=2i 2"]) == []
    [(path, params, headers, body)] = _Recorder.seen
    assert path == "/api/v2/write"
    assert params == {"bucket": ["kerbside"], "org": ["city"], "precision": ["ns"]}
    assert headers["Authorization"] == "Token s3cret" and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == b"m x=1i 1\nm x=2i 2"


@pytest.mark.parametrize(("status", "error"), [(500, InfluxDown), (503, InfluxDown), (401, InfluxAuthError), (429, InfluxDown)])
def test_server_side_failures_keep_the_batch(recorder: str, status: int, error: type) -> None:
    _Recorder.status = status
    w = InfluxWriter(InfluxConfig(url=recorder, api="v2", bucket="b"))
    with pytest.raises(error):
        w.write(["m x=1i 1", "m x=2i 2"])
    assert len(_Recorder.seen) == 1  # no bisection on an outage: the whole batch goes to the spool
