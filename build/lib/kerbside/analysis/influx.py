"""The analyst's InfluxDB client: kerbside's one client (kerbside.core.influx) plus DataFrames.

Analysts run one query at a time from a notebook or the CLI; what they add to
the shared client is turning a result into a DataFrame. It lives here, not in
core, so that the collector never imports pandas.
"""

from __future__ import annotations

import pandas as pd

from kerbside.core.influx import DEFAULT_DB, DEFAULT_URL, InfluxClient


class Influx(InfluxClient):
    def __init__(self, url: str = DEFAULT_URL, db: str = DEFAULT_DB, timeout: float = 120) -> None:
        super().__init__(url, db, timeout=timeout)

    def __enter__(self) -> Influx:
        return self

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
