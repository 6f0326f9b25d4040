"""The one InfluxDB client: request shapes and error classes against a recording server, then the real influxd."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from kerbside.core import lineproto as lp
from kerbside.core.errors import KerbsideError
from kerbside.core.influx import (
    InfluxAuthError,
    InfluxClient,
    InfluxDown,
    InfluxError,
    InfluxRefused,
    quote_ident,
    quote_str,
)


class _Server(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, dict[str, list[str]], dict[str, str], bytes]]] = []
    status: ClassVar[int] = 204
    body: ClassVar[bytes] = b""

    def _answer(self) -> None:
        u = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        params = urllib.parse.parse_qs(u.query)
        if self.headers.get("Content-Type") == "application/x-www-form-urlencoded":
            params |= urllib.parse.parse_qs(body.decode())
        _Server.seen.append((self.command, u.path, params, dict(self.headers), body))
        self.send_response(_Server.status)
        self.send_header("Content-Length", str(len(_Server.body)))
        self.end_headers()
        self.wfile.write(_Server.body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
    _Server.seen, _Server.status, _Server.body = [], 204, b""
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _answer(status: int, body: object) -> None:
    _Server.status, _Server.body = status, (body if isinstance(body, bytes) else json.dumps(body).encode())


def test_v1_write_query_and_basic_auth(server: str) -> None:
    with InfluxClient(server + "/", "city", username="kc", password="pw") as c:
        c.write(["m x=1i 1", "m x=2i 2"], rp="raw")
        c.write([])  # nothing to send: no request
        _answer(200, {"results": [{"statement_id": 0, "series": [{"name": "m", "columns": ["time", "x"], "values": [[1, 1]]}]}]})
        assert c.query('SELECT "x" FROM "m"') == [{"name": "m", "columns": ["time", "x"], "values": [[1, 1]]}]
        _answer(200, {"results": [{"statement_id": 0}]})
        c.create_database()
        assert c.requests == 3
    (m1, p1, q1, h1, b1), (m2, p2, q2, _, _), (m3, p3, q3, _, _) = _Server.seen
    assert (m1, p1, q1, b1) == ("POST", "/write", {"db": ["city"], "precision": ["ns"], "rp": ["raw"]}, b"m x=1i 1\nm x=2i 2")
    assert h1["Authorization"] == "Basic " + base64.b64encode(b"kc:pw").decode() and "Content-Encoding" not in h1
    assert (m2, p2, q2) == ("GET", "/query", {"q": ['SELECT "x" FROM "m"'], "db": ["city"], "epoch": ["ns"]})
    assert (m3, p3, q3) == ("POST", "/query", {"q": ['CREATE DATABASE "city"'], "epoch": ["ns"]})


def test_v2_write_uses_bucket_org_token_and_gzip(server: str) -> None:
    c = InfluxClient(server, "ignored", api="v2", token="s3cret", org="city", bucket="kerbside", gzip=True)
    c.write(["m x=1i 1"], rp="unsynced")
    InfluxClient(server, api="v2", bucket="kerbside/raw").write(["m x=1i 1"], rp="unsynced")  # the bucket names an RP
    (_, path, params, headers, body), (_, _, params2, _, _) = _Server.seen
    assert path == "/api/v2/write"
    assert params == {"bucket": ["kerbside/unsynced"], "org": ["city"], "precision": ["ns"]}
    assert params2["bucket"] == ["kerbside/raw"]
    assert headers["Authorization"] == "Token s3cret" and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == b"m x=1i 1"


@pytest.mark.parametrize(("status", "error"), [(500, InfluxDown), (503, InfluxDown), (408, InfluxDown), (429, InfluxDown),
                                               (401, InfluxAuthError), (403, InfluxAuthError), (400, InfluxRefused),
                                               (404, InfluxRefused), (413, InfluxRefused)])
def test_failures_say_keep_and_retry_or_refused(server: str, status: int, error: type[InfluxError]) -> None:
    _answer(status, {"error": f"said {status}"})
    c = InfluxClient(server, "db")
    with pytest.raises(error, match=f"said {status}") as e:
        c.write(["m x=1i 1"])
    assert isinstance(e.value, KerbsideError)
    assert isinstance(e.value, InfluxDown) == (status >= 500 or status in (401, 403, 408, 429))
    if isinstance(e.value, InfluxRefused):
        assert (e.value.status, e.value.message) == (status, f"said {status}")
    with pytest.raises(error):
        c.query("SHOW DATABASES")


def test_query_errors_are_refusals_that_name_the_query(server: str) -> None:
    c = InfluxClient(server, "db")
    for body in ({"error": "error parsing query"}, {"results": [{"statement_id": 0, "error": "database not found: db"}]},
                 b"<html>proxy</html>"):
        _answer(200, body)
        with pytest.raises(InfluxRefused, match="SELECT nonsense") as e:
            c.query("SELECT nonsense")
        assert e.value.status == 200


def test_unreachable_is_down() -> None:
    c = InfluxClient("http://127.0.0.1:9", "db", timeout=2)
    with pytest.raises(InfluxDown, match=r"cannot reach InfluxDB at http://127\.0\.0\.1:9 "):
        c.write(["m x=1i 1"])
    with pytest.raises(InfluxDown, match="cannot reach InfluxDB"):
        c.query("SHOW DATABASES")
    assert c.ping() is False


def test_influxql_quoting() -> None:
    assert quote_ident('we"ird\\db') == '"we\\"ird\\\\db"'
    assert quote_str("it's\\") == "'it\\'s\\\\'"


@pytest.mark.services
def test_against_influxd(influxd) -> None:  # type: ignore[no-untyped-def]
    c = InfluxClient(influxd.url, "core_client", gzip=True)
    assert c.ping()
    c.query('DROP DATABASE "core_client"', post=True)
    with pytest.raises(InfluxRefused, match="database not found"):
        c.write(["m x=1i 1"])
    c.create_database()
    c.create_database()  # idempotent
    c.query('CREATE RETENTION POLICY "short" ON "core_client" DURATION 1h REPLICATION 1', post=True)
    c.write(["m,k=a x=1i 1000000000", "m,k=b x=2i 2000000000"])
    with pytest.raises(InfluxRefused, match="field type conflict") as e:
        c.write(['m,k=c x="text" 3000000000'])
    assert e.value.status == 400
    with pytest.raises(InfluxDown, match="HTTP 500: retention policy not found"):  # 1.x answers 500: wait for it
        c.write(["m x=1i 1"], rp="nope")
    with pytest.raises(InfluxRefused, match="error parsing query"):
        c.query("SELEKT 1")
    assert c.query('SELECT "x" FROM "m" GROUP BY "k"') == [
        {"name": "m", "tags": {"k": "a"}, "columns": ["time", "x"], "values": [[1000000000, 1]]},
        {"name": "m", "tags": {"k": "b"}, "columns": ["time", "x"], "values": [[2000000000, 2]]}]
    assert c.query('SELECT "x" FROM "m" WHERE "k" = ' + quote_str("b"), epoch="s")[0]["values"] == [[2, 2]]
    c.query('DROP DATABASE "core_client"', post=True)
    c.close()


# Values for every escaping rule; what InfluxDB 1.x stores is each value with the documented replacements.
TRICKY = ["plain", "a b", "a,b", "a=b", 'a"b', "a\\b", "a\\\\b", "é€😀", "a\nb", "a\r\nb", "a\tb", "x\x7fy", " lead",
          "trail ", '"q"', "=", ",", " ", "a\\", "a\\,b", "a\\ b", "a\\=b", 'a\\"b', "\\", "a\u2028b"]


def _stored_name(v: str) -> str:
    """What the module docstring promises for a name: Control Pictures, and ⧵ for a backslash read as an escape."""
    v = lp.control_pictures(v)
    out = []
    for i, ch in enumerate(v):
        out.append("⧵" if ch == "\\" and (i + 1 == len(v) or v[i + 1] in ',= "') else ch)
    return "".join(out)


@pytest.mark.services
def test_escaping_round_trips_through_influxd(influx) -> None:  # type: ignore[no-untyped-def]
    lines = [lp.line("m " + v, {"t " + v: v, "i": str(i)}, {"s": v, "f " + v: i}, i + 1) for i, v in enumerate(TRICKY)]
    influx.write(lines)
    measurements = {row[0] for s in influx.query("SHOW MEASUREMENTS") for row in s["values"]}
    assert measurements == {_stored_name("m " + v) for v in TRICKY}
    for i, v in enumerate(TRICKY):
        m = _stored_name("m " + v)
        [series] = influx.query(f"SELECT * FROM {quote_ident(m)} GROUP BY *")
        [row] = series["values"]
        fields = {k: x for k, x in zip(series["columns"], row, strict=True) if x is not None and k != "time"}
        assert series["tags"] == {_stored_name("t " + v): _stored_name(v), "i": str(i)}, repr(v)
        assert fields == {"s": lp.control_pictures(v), _stored_name("f " + v): i}, repr(v)
