"""A minimal synchronous InfluxDB 1.x (/query, /write) client for the analyst layer.

Analysts run one query at a time from a notebook or the CLI; a blocking client
that turns results into DataFrames and InfluxDB errors into exceptions that
name the query is all they need.
"""

from __future__ import annotations

from typing import Any

import httpx
import pandas as pd

from kerbside.core import errors

DEFAULT_URL = "http://127.0.0.1:8086"
DEFAULT_DB = "kerbside"


class InfluxError(errors.InfluxError, RuntimeError):
    """For an analyst an unreachable or refusing InfluxDB is mostly a wrong --influx/--db: exit 2, like bad input."""

    exit_code = 2


def quote_ident(name: str) -> str:
    """Double-quote an InfluxQL identifier (database, RP, measurement, tag)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_str(value: str) -> str:
    """Single-quote an InfluxQL string literal (tag values in WHERE)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Influx:
    def __init__(self, url: str = DEFAULT_URL, db: str = DEFAULT_DB, timeout: float = 120) -> None:
        self.url = url.rstrip("/")
        self.db = db
        self._http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Influx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, q: str, post: bool = False) -> list[dict[str, Any]]:
        """Series of the first statement; times as ns integers."""
        params = {"q": q, "db": self.db, "epoch": "ns"}
        try:
            r = self._http.post(f"{self.url}/query", data=params) if post else self._http.get(f"{self.url}/query", params=params)
        except httpx.HTTPError as e:
            raise InfluxError(f"cannot reach InfluxDB at {self.url} ({e}); is influxd running? check --influx-url") from e
        try:
            body = r.json()
        except ValueError as e:
            raise InfluxError(f"InfluxDB answered HTTP {r.status_code} with non-JSON: {r.text[:200]}") from e
        if "error" in body:
            raise InfluxError(f"{body['error']} (query: {q[:300]})")
        res = body["results"][0]
        if "error" in res:
            raise InfluxError(f"{res['error']} (query: {q[:300]})")
        return list(res.get("series", []))

    def frame(self, q: str) -> pd.DataFrame:
        """All series of a query as one DataFrame: tags as columns, `time` as tz-aware UTC."""
        parts = []
        for s in self.query(q):
            df = pd.DataFrame(s["values"], columns=s["columns"])
            for k, v in (s.get("tags") or {}).items():
                df[k] = v
            parts.append(df)
        if not parts:
            return pd.DataFrame()
        df = pd.concat(parts, ignore_index=True)
        df["time"] = pd.to_datetime(df["time"], unit="ns", utc=True)
        return df

    def write(self, lines: list[str], rp: str | None = None) -> None:
        params = {"db": self.db, "precision": "ns"}
        if rp:
            params["rp"] = rp
        r = self._http.post(f"{self.url}/write", params=params, content="\n".join(lines).encode())
        if r.status_code != 204:
            raise InfluxError(f"write failed: HTTP {r.status_code} {r.text[:300]}")
