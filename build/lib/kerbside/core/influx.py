"""The one InfluxDB HTTP client: line protocol in (/write), InfluxQL out (/query).

Synchronous on purpose: the collector writes from one writer thread, analysts
and `kerbside gaps scan` run one query at a time, and the tests and benchmarks
read back what was written. /write and /query are InfluxDB 1.x's API, which
2.x (v1 compatibility) and 3 Core serve too; api="v2" writes through
/api/v2/write with a bucket, an org and a token instead.

Errors say what the caller should do, which is all the collector's durability
rests on:

    InfluxError         (KerbsideError) anything InfluxDB-related
    ├── InfluxDown      InfluxDB cannot take the request now (unreachable, timeout,
    │   │               5xx, 408, 429): keep the data and retry later
    │   └── InfluxAuthError   credentials missing or without rights (401/403):
    │                         fix the config; the data waits meanwhile
    └── InfluxRefused   InfluxDB refused this request for what it is (4xx, an
                        InfluxQL error): sending the same bytes again fails again

Policy stays with the callers: the collector bisects a refused batch down to
the guilty lines and dead-letters them (collector.influx), the analysts turn
results into DataFrames (analysis.influx).
"""

from __future__ import annotations

import gzip as gzip_
from collections.abc import Sequence
from typing import Any

import httpx

from kerbside.core.errors import InfluxError

DEFAULT_URL = "http://127.0.0.1:8086"
DEFAULT_DB = "kerbside"


class InfluxDown(InfluxError, RuntimeError):
    """InfluxDB cannot take the request now; whatever was being written must be kept and retried."""


class InfluxAuthError(InfluxDown):
    """Credentials are missing or lack rights: fix the config (data waits in the spool meanwhile)."""


class InfluxRefused(InfluxError):
    """InfluxDB refused the request itself (bad line, field type conflict, InfluxQL error): retrying cannot help."""

    def __init__(self, status: int, message: str, what: str = "the request") -> None:
        super().__init__(f"InfluxDB refused {what} (HTTP {status}): {message}")
        self.status = status
        self.message = message
        """InfluxDB's own error text, e.g. 'field type conflict: ...'."""


def quote_ident(name: str) -> str:
    """Double-quote an InfluxQL identifier (database, retention policy, measurement, tag or field key)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_str(value: str) -> str:
    """Single-quote an InfluxQL string literal (tag values in WHERE)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def error_text(r: httpx.Response) -> str:
    """InfluxDB's error message from a failed response (JSON {"error": ...} or plain text), shortened."""
    try:
        return str(r.json().get("error", r.text))[:500]
    except (ValueError, AttributeError):
        return r.text[:500]


class InfluxClient:
    """One InfluxDB server and database.

    Authenticate with username/password (1.x) or an API token (2.x, 3), not both.
    gzip compresses write bodies (worth it: line protocol shrinks ~10×).
    """

    def __init__(self, url: str = DEFAULT_URL, db: str = DEFAULT_DB, *, username: str = "", password: str = "",
                 token: str = "", api: str = "v1", org: str = "", bucket: str = "", gzip: bool = False,
                 timeout: float = 30.0) -> None:
        if api not in ("v1", "v2"):
            raise ValueError(f"api must be v1 or v2, not {api!r}")
        self.url = url.rstrip("/")
        self.db = db
        self.api = api
        self.org = org
        self.bucket = bucket
        self.gzip = gzip
        self.requests = 0
        """HTTP requests sent so far (the collector's bisection is bounded by it)."""
        headers = {"Authorization": f"Token {token}"} if token else {}
        auth = (username, password) if username else None
        self._http = httpx.Client(base_url=self.url, headers=headers, auth=auth, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> InfluxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        self.requests += 1
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise InfluxDown(f"cannot reach InfluxDB at {self.url} ({type(e).__name__}: {e})") from e
        if r.status_code in (401, 403):
            raise InfluxAuthError(f"InfluxDB at {self.url} refused our credentials (HTTP {r.status_code}): "
                                  f"{error_text(r)}")
        if r.status_code >= 500 or r.status_code in (408, 429):
            raise InfluxDown(f"InfluxDB at {self.url} answered HTTP {r.status_code}: {error_text(r)}")
        return r

    def ping(self, timeout: float = 2.0) -> bool:
        """True when the server answers /ping (it may still refuse writes)."""
        try:
            return self._http.get("/ping", timeout=timeout).status_code in (200, 204)
        except httpx.HTTPError:
            return False

    def query(self, q: str, *, post: bool = False, epoch: str = "ns", db: str | None = None) -> list[dict[str, Any]]:
        """The series of the first statement's result (times as integers in `epoch` units).

        post=True for statements that change something (CREATE, DROP, SELECT INTO): InfluxDB refuses them on GET.
        """
        params = {"q": q, "epoch": epoch}
        target = self.db if db is None else db
        if target:
            params["db"] = target
        r = self._send("POST", "/query", data=params) if post else self._send("GET", "/query", params=params)
        try:
            body = r.json()
        except ValueError:
            raise InfluxRefused(r.status_code, f"non-JSON answer: {r.text[:200]}", f"the query {q[:300]!r}") from None
        err = body.get("error") if isinstance(body, dict) else None
        if err is None and r.status_code < 300:
            results = body.get("results") or [{}]
            err = results[0].get("error")
            if err is None:
                return list(results[0].get("series", []))
        raise InfluxRefused(r.status_code, str(err or r.text[:300]), f"the query {q[:300]!r}")

    def create_database(self, name: str | None = None) -> None:
        """CREATE DATABASE (idempotent in 1.x; needs admin rights when auth is on)."""
        self.query(f"CREATE DATABASE {quote_ident(name or self.db)}", post=True, db="")

    def write(self, lines: Sequence[str], rp: str = "", db: str | None = None) -> None:
        """Write line protocol (nanosecond timestamps), all lines or none.

        rp: a retention policy (v1), or appended to the bucket as bucket/rp (v2, unless the bucket names one).
        """
        if not lines:
            return
        body = "\n".join(lines).encode()
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.gzip:
            body = gzip_.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        if self.api == "v2":
            path = "/api/v2/write"
            params = {"bucket": self.bucket + (f"/{rp}" if rp and "/" not in self.bucket else ""),
                      "org": self.org, "precision": "ns"}
        else:
            path = "/write"
            params = {"db": self.db if db is None else db, "precision": "ns"}
            if rp:
                params["rp"] = rp
        r = self._send("POST", path, params=params, content=body, headers=headers)
        if r.status_code >= 300:
            raise InfluxRefused(r.status_code, error_text(r), "the write")
