"""Writing line protocol to InfluxDB: v1 /write (1.x) or v2 /api/v2/write, gzip, and 4xx bisection.

The writer distinguishes the two failures that need opposite handling:
InfluxDB unreachable, 5xx, or refusing our credentials (`InfluxDown`: keep the
batch, spool it, retry later) versus InfluxDB refusing some lines (4xx such as a
field type conflict: retrying the same bytes would loop forever, so the batch
is bisected down to the guilty lines, which are handed back for the
dead-letter store while every other line is written).
"""

from __future__ import annotations

import gzip
import logging

import httpx

from kerbside.core.errors import InfluxError
from kerbside.core.settings import InfluxConfig

log = logging.getLogger("kerbside.collector.influx")


class InfluxDown(InfluxError, RuntimeError):
    """InfluxDB cannot take data right now; the batch must be kept and retried."""


class InfluxAuthError(InfluxDown):
    """Credentials are missing or lack rights: fix the config (data waits in the spool meanwhile)."""


def _error_text(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text))[:500]
    except (ValueError, AttributeError):
        return r.text[:500]


class InfluxWriter:
    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        headers = {}
        if cfg.api == "v2" and cfg.token:
            headers["Authorization"] = f"Token {cfg.token}"
        auth = (cfg.username, cfg.password) if cfg.username and cfg.api == "v1" else None
        self.client = httpx.Client(base_url=cfg.url.rstrip("/"), headers=headers, auth=auth, timeout=cfg.timeout_s)
        self.db_ready = not cfg.create_db or cfg.api == "v2"
        self.requests = 0

    def close(self) -> None:
        self.client.close()

    def ping(self) -> bool:
        try:
            return self.client.get("/ping", timeout=2).status_code in (200, 204)
        except httpx.HTTPError:
            return False

    def ensure_db(self) -> None:
        """CREATE DATABASE is idempotent in 1.x; needs admin rights when auth is on."""
        if self.db_ready:
            return
        try:
            r = self.client.post("/query", params={"q": f'CREATE DATABASE "{self.cfg.db}"'})
        except httpx.HTTPError as e:
            raise InfluxDown(f"{self.cfg.url}: {e}") from e
        if r.status_code in (401, 403):
            raise InfluxAuthError(f"cannot create database {self.cfg.db!r}: {_error_text(r)}. Create it as an admin "
                                  f"(CREATE DATABASE \"{self.cfg.db}\") or give the collector's user admin rights")
        if r.status_code >= 300:
            raise InfluxDown(f"CREATE DATABASE failed with HTTP {r.status_code}: {_error_text(r)}")
        body = r.json()
        err = body.get("results", [{}])[0].get("error")
        if err:
            raise InfluxAuthError(f"cannot create database {self.cfg.db!r}: {err}")
        self.db_ready = True
        log.info("database %s is ready", self.cfg.db)

    def _post(self, lines: list[str], rp: str) -> httpx.Response:
        body = "\n".join(lines).encode()
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.cfg.gzip:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        if self.cfg.api == "v2":
            path = "/api/v2/write"
            params = {"bucket": self.cfg.bucket + (f"/{rp}" if rp and "/" not in self.cfg.bucket else ""),
                      "org": self.cfg.org, "precision": "ns"}
        else:
            path = "/write"
            params = {"db": self.cfg.db, "precision": "ns"}
            if rp:
                params["rp"] = rp
        self.requests += 1
        try:
            return self.client.post(path, params=params, content=body, headers=headers)
        except httpx.HTTPError as e:
            raise InfluxDown(f"{self.cfg.url}: {type(e).__name__}: {e}") from e

    def write(self, lines: list[str], rp: str = "") -> list[tuple[str, str]]:
        """Write every line InfluxDB accepts; return the (line, error) pairs it refuses. Raises InfluxDown."""
        if not lines:
            return []
        self.ensure_db()
        r = self._post(lines, rp)
        if r.status_code < 300:
            return []
        if r.status_code == 404 and self.cfg.api == "v1" and "database not found" in r.text and self.cfg.create_db:
            self.db_ready = False
            self.ensure_db()
            r = self._post(lines, rp)
            if r.status_code < 300:
                return []
        return self._handle_failure(lines, rp, r)

    def _handle_failure(self, lines: list[str], rp: str, r: httpx.Response) -> list[tuple[str, str]]:
        text = _error_text(r)
        if r.status_code in (401, 403):
            raise InfluxAuthError(f"InfluxDB refused our credentials (HTTP {r.status_code}): {text}")
        if r.status_code >= 500 or r.status_code in (408, 429):
            raise InfluxDown(f"InfluxDB HTTP {r.status_code}: {text}")
        if "retention policy not found" in text:
            raise InfluxDown(f"{text}: create it (kerbside db init) or fix influx.rp / influx.unsynced_rp")
        if "database not found" in text:
            raise InfluxDown(f"{text}: create the database or set influx.create_db = true")
        if len(lines) == 1:
            return [(lines[0], text)]
        log.warning("InfluxDB refused a batch of %d lines (HTTP %d: %s); bisecting", len(lines), r.status_code, text)
        mid = len(lines) // 2
        bad = []
        for half in (lines[:mid], lines[mid:]):
            hr = self._post(half, rp)
            if hr.status_code >= 300:
                bad.extend(self._handle_failure(half, rp, hr))
        return bad
