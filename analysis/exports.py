"""Hourly and daily values for analysts' own tools: CSV or Parquet, per site and per zone.

Four tables, one file each: hourly-sites, daily-sites, hourly-zones, daily-zones. Every value comes
with what an analyst needs to judge it: data capture, the validity flag of the capture rules
(analysis.query), and whether it was calibrated. Zones aggregate their sites' VALID values only:
`<p>` is the mean of the valid site values of that hour or day and `<p>_sites` how many there were.

Times: `time` is the UTC start of the hour (ISO 8601 with Z), `local_time` the same instant in the
analysis time zone, `day` the local day; a daily row is one local day (23-25 h).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kerbside.analysis import calibration, query
from kerbside.analysis.influx import Influx
from kerbside.analysis.limits import POLLUTANTS
from kerbside.analysis.timerange import LocalRange
from kerbside.core.errors import AnalysisError

FORMATS = ("csv", "parquet")
TABLES = ("hourly-sites", "daily-sites", "hourly-zones", "daily-zones")
WEATHER = ("temp", "rh", "pressure")


class ExportFormatError(AnalysisError, ValueError):
    pass


def _hourly_sites(hours: pd.DataFrame) -> pd.DataFrame:
    cols = ["time", "local_time", "day", "device", "site", "zone", "capture"]
    for p in POLLUTANTS:
        cols += [p, f"{p}_capture", f"{p}_valid", f"{p}_calibrated", f"{p}_raw"]
    cols += [c for c in WEATHER if c in hours]
    return hours[cols].sort_values(["site", "device", "time"]).reset_index(drop=True)


def _daily_sites(days: pd.DataFrame) -> pd.DataFrame:
    cols = ["day", "device", "site", "zone", "hours_in_day"]
    for p in POLLUTANTS:
        cols += [p, f"{p}_hours", f"{p}_capture", f"{p}_valid"]
    return days[cols].sort_values(["site", "device", "day"]).reset_index(drop=True)


def _zones(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    parts = []
    for p in POLLUTANTS:
        ok = frame[frame[f"{p}_valid"]]
        g = ok.groupby(["zone", *keys])[p].agg(["mean", "count"]).rename(columns={"mean": p, "count": f"{p}_sites"})
        parts.append(g)
    base = frame[["zone", *keys]].drop_duplicates().set_index(["zone", *keys])
    out = base.join(parts, how="left").reset_index()
    for p in POLLUTANTS:
        out[f"{p}_sites"] = out[f"{p}_sites"].fillna(0).astype(int)
    out["sites"] = frame.groupby(["zone", *keys])["device"].nunique().reindex(
        pd.MultiIndex.from_frame(out[["zone", *keys]])).to_numpy()
    return out.sort_values(["zone", *keys]).reset_index(drop=True)


def tables(client: Influx, rng: LocalRange, period_s: int = 60,
           calibrations: calibration.Calibrations | None = None) -> dict[str, pd.DataFrame]:
    hours = query.hourly(client, rng, period_s, calibrations=calibrations)
    days = query.daily(hours, rng)
    hs = _hourly_sites(hours)
    ds = _daily_sites(days)
    hz = _zones(hours, ["time", "local_time", "day"])
    dz = _zones(days, ["day"])
    return {"hourly-sites": hs, "daily-sites": ds, "hourly-zones": hz, "daily-zones": dz}


def _for_file(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    if "time" in out:
        out["time"] = out["time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    if "local_time" in out:
        out["local_time"] = out["local_time"].map(lambda t: t.isoformat())
    if "day" in out:
        out["day"] = out["day"].map(str)
    return out


def write(frames: dict[str, pd.DataFrame], out: Path, fmt: str) -> list[Path]:
    """One file per table; CSV with '.' decimals and empty cells for missing values, Parquet via pyarrow."""
    if fmt not in FORMATS:
        raise ExportFormatError(f"unknown format {fmt!r}: use {' or '.join(FORMATS)}")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in frames.items():
        path = out / f"{name}.{fmt}"
        if fmt == "csv":
            _for_file(df).to_csv(path, index=False, float_format="%.4f")
        else:
            frame = df.copy()
            frame["day"] = pd.to_datetime(frame["day"]).dt.date
            if "local_time" in frame:
                frame["local_time"] = frame["local_time"].map(lambda t: t.isoformat())
            frame.to_parquet(path, index=False, engine="pyarrow")
        paths.append(path)
    return paths
