"""The collector's write policy on top of the InfluxDB client: create the database, bisect refused batches.

The client (kerbside.core.influx) tells the two failures that need opposite
handling apart: InfluxDB unreachable, 5xx, or refusing our credentials
(`InfluxDown`: keep the batch, spool it, retry later) versus InfluxDB refusing
some lines (`InfluxRefused`, a 4xx such as a field type conflict: retrying the
same bytes would loop forever). Here a refused batch is bisected down to the
guilty lines, which are handed back for the dead-letter store while every
other line is written. A missing database or retention policy refuses every
line whatever it holds, so it counts as down: the data waits in the spool
until the operator creates it.
"""

from __future__ import annotations

import logging

from kerbside.core.influx import InfluxAuthError, InfluxClient, InfluxDown, InfluxRefused
from kerbside.core.settings import InfluxConfig

log = logging.getLogger("kerbside.collector.influx")


def client_for(cfg: InfluxConfig, timeout: float | None = None) -> InfluxClient:
    """The client the collector's settings describe: v1 with username/password, or v2 with a token."""
    v2 = cfg.api == "v2"
    return InfluxClient(cfg.url, cfg.db, api=cfg.api, org=cfg.org, bucket=cfg.bucket, gzip=cfg.gzip,
                        token=cfg.token if v2 else "", username="" if v2 else cfg.username,
                        password="" if v2 else cfg.password, timeout=cfg.timeout_s if timeout is None else timeout)


class InfluxWriter:
    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        self.client = client_for(cfg)
        self.db_ready = not cfg.create_db or cfg.api == "v2"
        self.requests = 0
        """Write requests sent (bisection is bounded by it)."""

    def close(self) -> None:
        self.client.close()

    def ping(self) -> bool:
        return self.client.ping()

    def ensure_db(self) -> None:
        """CREATE DATABASE is idempotent in 1.x; needs admin rights when auth is on."""
        if self.db_ready:
            return
        advice = (f"Create it as an admin (CREATE DATABASE \"{self.cfg.db}\") or give the collector's user admin "
                  "rights")
        try:
            self.client.create_database()
        except InfluxAuthError as e:
            raise InfluxAuthError(f"cannot create database {self.cfg.db!r}: {e}. {advice}") from e
        except InfluxRefused as e:
            if e.status >= 300:
                raise InfluxDown(f"CREATE DATABASE failed with HTTP {e.status}: {e.message}") from e
            # 1.x answers 200 with "requires admin privilege" in the statement's result
            raise InfluxAuthError(f"cannot create database {self.cfg.db!r}: {e.message}. {advice}") from e
        self.db_ready = True
        log.info("database %s is ready", self.cfg.db)

    def write(self, lines: list[str], rp: str = "") -> list[tuple[str, str]]:
        """Write every line InfluxDB accepts; return the (line, error) pairs it refuses. Raises InfluxDown."""
        if not lines:
            return []
        self.ensure_db()
        try:
            self._post(lines, rp)
            return []
        except InfluxRefused as e:
            if not ("database not found" in e.message and self.cfg.api == "v1" and self.cfg.create_db):
                return self._refused(lines, rp, e)
        self.db_ready = False  # dropped while we ran: create it again, once
        self.ensure_db()
        try:
            self._post(lines, rp)
            return []
        except InfluxRefused as e:
            return self._refused(lines, rp, e)

    def _post(self, lines: list[str], rp: str) -> None:
        self.requests += 1
        self.client.write(lines, rp)

    def _refused(self, lines: list[str], rp: str, e: InfluxRefused) -> list[tuple[str, str]]:
        if "retention policy not found" in e.message:
            raise InfluxDown(f"{e.message}: create it (kerbside db init) or fix influx.rp / influx.unsynced_rp") from e
        if "database not found" in e.message:
            raise InfluxDown(f"{e.message}: create the database or set influx.create_db = true") from e
        if len(lines) == 1:
            return [(lines[0], e.message)]
        log.warning("InfluxDB refused a batch of %d lines (HTTP %d: %s); bisecting", len(lines), e.status, e.message)
        mid = len(lines) // 2
        bad = []
        for half in (lines[:mid], lines[mid:]):
            try:
                self._post(half, rp)
            except InfluxRefused as he:
                bad.extend(self._refused(half, rp, he))
        return bad
