"""Calibrating low-cost sensors against a reference station they were co-located with.

Model, per node and pollutant (NO2, PM2.5, PM10), fitted by least squares on the hours where the
node's hourly mean is valid and the reference has a value:

    reference = intercept + slope * node + rh * RH + temp * T

RH (%) and T (°C) are the node's own hourly means: optical PM counters over-read in humid air
(water uptake by particles) and electrochemical NO2 cells drift with temperature, so both terms are
fitted for every pollutant. The model is linear, so applying it to an hourly mean gives the mean of
the calibrated readings: the hourly aggregates need no recomputation.

Quality against the Directive's data-quality objectives for indicative measurements (Directive (EU)
2024/2881, Annex V: expanded uncertainty 25 % for NO2, 50 % for PM10 and PM2.5): the calibrated
hourly values are compared with the reference by orthogonal regression, as in the EU Guide to the
Demonstration of Equivalence (GDE), and the expanded relative uncertainty is evaluated at the
pollutant's shortest-period EU 2030 limit value (NO2 200 µg/m³ hourly, PM2.5 25 and PM10 45 µg/m³
daily). Simplifications, stated in the report and the guide: hourly pairs for PM too (the GDE uses
daily ones), the reference's own uncertainty taken as zero (which makes U larger, not smaller), and
the fit data are also the test data (co-locate for at least two weeks so that this matters little).

Coefficients are stored with the device in the registry (Device.calibrations) with their validity
period; analysis.query applies them to the hourly means whose hour falls inside it, keeps the raw
value in `<p>_raw` and says which values were calibrated in `<p>_calibrated`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kerbside.analysis.limits import limits
from kerbside.core.errors import AnalysisError
from kerbside.core.registry import Device, Registry

POLLUTANTS = ("no2", "pm25", "pm10")
DQO = {"no2": 0.25, "pm25": 0.50, "pm10": 0.50}
"""Directive (EU) 2024/2881 Annex V: uncertainty objective of indicative measurements (relative, expanded)."""
MIN_HOURS = 48
"""Fewer co-located valid hours than this cannot support four coefficients and an honest uncertainty."""
ALIASES = {
    "no2": "no2", "nitrogen dioxide": "no2", "8": "no2",
    "pm2.5": "pm25", "pm25": "pm25", "pm2,5": "pm25", "6001": "pm25",
    "pm10": "pm10", "5": "pm10",
}
"""Pollutant names as networks publish them, including the EEA's numeric codes (8, 6001, 5)."""
UNITS = {"µg/m3", "ug/m3", "µg/m³", "ug.m-3", "µg.m-3", "ug/m^3"}


class CalibrationError(AnalysisError, ValueError):
    pass


@dataclass(frozen=True)
class Coefficients:
    pollutant: str
    intercept: float
    slope: float
    rh: float
    temp: float
    valid_from: str
    """UTC instant (ISO 8601) from which these coefficients apply."""
    valid_to: str | None
    """UTC instant (exclusive) until which they apply; None: until the next calibration."""
    reference: str
    """The reference series they were fitted against (file name)."""
    fitted: str
    hours: int
    r2: float
    rmse: float
    bias: float
    uncertainty: float
    """Expanded relative uncertainty at the limit value (0.18 = 18 %), see the module docstring."""
    limit_value: float
    dqo: float

    @property
    def meets_dqo(self) -> bool:
        return self.uncertainty <= self.dqo

    def covers(self, t: pd.Series) -> pd.Series:
        lo = pd.Timestamp(self.valid_from)
        ok = t >= lo
        if self.valid_to:
            ok &= t < pd.Timestamp(self.valid_to)
        return ok

    def apply(self, raw: pd.Series | np.ndarray, rh: pd.Series | np.ndarray, temp: pd.Series | np.ndarray):  # type: ignore[no-untyped-def]
        return self.intercept + self.slope * raw + self.rh * rh + self.temp * temp

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Calibrations = dict[str, list[Coefficients]]
"""Device id -> its calibrations (any pollutant, any period)."""


def from_registry(devices: dict[str, Device]) -> Calibrations:
    out: Calibrations = {}
    for dev in devices.values():
        try:
            cs = [Coefficients(**c) for c in dev.calibrations]
        except TypeError as e:
            raise CalibrationError(f"device {dev.id}: a calibration in the registry is malformed ({e}); "
                                   "run `kerbside calibrate` again for it") from e
        if cs:
            out[dev.id] = cs
    return out


def load(registry: Path) -> Calibrations:
    return from_registry(Registry(registry).load())


# -- the reference series -------------------------------------------------------------------------
def read_reference(path: Path, timestamp: str = "start") -> pd.DataFrame:
    """Hourly reference means from a CSV with a header `timestamp,pollutant,value` (an optional `unit`
    column must say µg/m3). Timestamps are ISO 8601 with an offset; `timestamp="end"` for networks that
    stamp the end of the averaging hour. Every bad line is reported at once and nothing is used."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise CalibrationError(f"cannot read the reference series {path}: {e.strerror}") from e
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise CalibrationError(f"{path}: no rows; expected a header timestamp,pollutant,value and hourly values")
    cols = {c.strip().lower() for c in rows[0]}
    if not {"timestamp", "pollutant", "value"} <= cols:
        raise CalibrationError(f"{path}: the header must name timestamp, pollutant and value (found {', '.join(sorted(cols))})")
    out, bad = [], []
    for i, raw in enumerate(rows, start=2):
        r = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        pol = ALIASES.get(r["pollutant"].lower())
        if pol is None:
            bad.append(f"line {i}: unknown pollutant {r['pollutant']!r} (NO2, PM2.5, PM10 or EEA code 8, 6001, 5)")
            continue
        if r.get("unit") and r["unit"].lower() not in {u.lower() for u in UNITS}:
            bad.append(f"line {i}: unit {r['unit']!r}; the reference must be in µg/m3")
            continue
        try:
            t = datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00"))
        except ValueError:
            bad.append(f"line {i}: timestamp {r['timestamp']!r} is not ISO 8601")
            continue
        if t.tzinfo is None:
            bad.append(f"line {i}: timestamp {r['timestamp']!r} has no UTC offset (write 2026-03-01T00:00:00+01:00 or …Z)")
            continue
        if r["value"] == "":
            continue  # a missing hour, as networks publish them
        try:
            v = float(r["value"])
        except ValueError:
            bad.append(f"line {i}: value {r['value']!r} is not a number")
            continue
        if not math.isfinite(v):
            bad.append(f"line {i}: value {r['value']!r} is not finite")
            continue
        out.append((pd.Timestamp(t).tz_convert("UTC") - (pd.Timedelta(hours=1) if timestamp == "end" else pd.Timedelta(0)),
                    pol, v))
    if bad:
        raise CalibrationError(f"{path}: {len(bad)} bad line(s), nothing used: " + "; ".join(bad[:5]))
    df = pd.DataFrame(out, columns=["time", "pollutant", "value"])
    dup = df.duplicated(["time", "pollutant"])
    if dup.any():
        first = df[dup].iloc[0]
        raise CalibrationError(f"{path}: {int(dup.sum())} duplicate hour(s), e.g. {first['pollutant']} at {first['time']}")
    return df


def write_reference(path: Path, rows: list[tuple[datetime, str, float]]) -> None:
    """The same CSV format, for the simulator's reference station and tests."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "pollutant", "value"])
        names = {"no2": "NO2", "pm25": "PM2.5", "pm10": "PM10"}
        for t, p, v in rows:
            w.writerow([t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), names.get(p, p), f"{v:.3f}"])


# -- fitting ---------------------------------------------------------------------------------------
def limit_value(pollutant: str) -> float:
    """The EU 2030 limit of the shortest averaging period: where the GDE evaluates the uncertainty."""
    order = {"hour": 0, "day": 1, "year": 2}
    lims = sorted((x for x in limits("EU2030") if x.pollutant == pollutant), key=lambda x: order[x.averaging])
    return float(lims[0].value)


def _orthogonal(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    sxx, syy = np.var(x), np.var(y)
    sxy = float(np.mean((x - x.mean()) * (y - y.mean())))
    if sxy == 0:
        return float(y.mean() - x.mean()), 1.0
    b = (syy - sxx + math.sqrt((syy - sxx) ** 2 + 4 * sxy**2)) / (2 * sxy)
    return float(y.mean() - b * x.mean()), float(b)


def expanded_uncertainty(calibrated: np.ndarray, reference: np.ndarray, lv: float) -> float:
    """GDE: u² = RSS/(n-2) + (a + (b-1)·LV)², U = 2u/LV (reference uncertainty taken as 0)."""
    a, b = _orthogonal(reference, calibrated)
    rss = float(np.sum((calibrated - a - b * reference) ** 2))
    u2 = rss / (len(reference) - 2) + (a + (b - 1) * lv) ** 2
    return 2 * math.sqrt(u2) / lv


@dataclass(frozen=True)
class Fit:
    device: str
    coefficients: Coefficients
    raw_gain: float
    """The uncalibrated sensor against the reference (node = raw_gain * reference + raw_offset), for the record."""
    raw_offset: float


def fit(device: str, pollutant: str, node_hours: pd.DataFrame, reference: pd.DataFrame, *, reference_name: str,
        valid_from: datetime, valid_to: datetime | None = None) -> Fit:
    """Fit one node and pollutant; `node_hours` is analysis.query.hourly() of the co-location period, uncalibrated."""
    h = node_hours[(node_hours["device"] == device) & node_hours[f"{pollutant}_valid"]]
    h = h[["time", pollutant, "rh", "temp"]].dropna()
    ref = reference[reference["pollutant"] == pollutant][["time", "value"]]
    both = h.merge(ref, on="time", how="inner")
    if len(both) < MIN_HOURS:
        raise CalibrationError(f"{device} {pollutant}: only {len(both)} hours with a valid node mean, RH, temperature "
                               f"and a reference value; need at least {MIN_HOURS} (co-locate for two weeks or more)")
    x = both[pollutant].to_numpy(float)
    y = both["value"].to_numpy(float)
    design = np.column_stack([np.ones(len(x)), x, both["rh"].to_numpy(float), both["temp"].to_numpy(float)])
    (c0, c1, c2, c3), *_ = np.linalg.lstsq(design, y, rcond=None)
    cal = design @ np.array([c0, c1, c2, c3])
    resid = cal - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")
    lv = limit_value(pollutant)
    raw_b, raw_a = np.polyfit(y, x, 1)
    coeffs = Coefficients(
        pollutant, float(c0), float(c1), float(c2), float(c3),
        valid_from=pd.Timestamp(valid_from).tz_convert("UTC").isoformat(),
        valid_to=pd.Timestamp(valid_to).tz_convert("UTC").isoformat() if valid_to else None,
        reference=reference_name, fitted=datetime.now(UTC).replace(microsecond=0).isoformat(), hours=len(both),
        r2=round(r2, 4), rmse=round(float(np.sqrt(np.mean(resid**2))), 3), bias=round(float(resid.mean()), 3),
        uncertainty=round(expanded_uncertainty(cal, y, lv), 4), limit_value=lv, dqo=DQO[pollutant])
    return Fit(device, coeffs, float(raw_b), float(raw_a))


def store(registry: Path, fits: list[Fit]) -> None:
    """Add the new coefficients; an older calibration of the same pollutant ends where the new one starts."""
    with Registry(registry).edit() as devices:
        for f in fits:
            dev = devices.get(f.device)
            if dev is None:
                raise CalibrationError(f"device {f.device} is not in the registry {registry}")
            new = f.coefficients
            kept = []
            for c in dev.calibrations:
                if c["pollutant"] != new.pollutant:
                    kept.append(c)
                    continue
                if c["valid_from"] >= new.valid_from:
                    continue  # superseded from its start
                if c["valid_to"] is None or c["valid_to"] > new.valid_from:
                    c = {**c, "valid_to": new.valid_from}
                kept.append(c)
            dev.calibrations = [*kept, new.as_dict()]


# -- applying ---------------------------------------------------------------------------------------
def apply(hours: pd.DataFrame, calibrations: Calibrations) -> pd.DataFrame:
    """Calibrate the hourly means in place of the raw ones where coefficients cover the hour.

    Adds `<p>_raw` (the sensor's value) and `<p>_calibrated` (True where a calibration applied). An
    hour inside a calibration's period without RH or temperature cannot be calibrated: its value
    becomes NaN, so it is not valid, rather than a raw value passing as a calibrated one."""
    for p in POLLUTANTS:
        if p not in hours:
            continue
        hours[f"{p}_raw"] = hours[p]
        hours[f"{p}_calibrated"] = False
    for device, cs in calibrations.items():
        mine = hours["device"] == device
        if not mine.any():
            continue
        for c in cs:
            if c.pollutant not in hours:
                continue
            sel = mine & c.covers(hours["time"])
            if not sel.any():
                continue
            rh = hours.loc[sel, "rh"] if "rh" in hours else np.nan
            temp = hours.loc[sel, "temp"] if "temp" in hours else np.nan
            hours.loc[sel, c.pollutant] = c.apply(hours.loc[sel, f"{c.pollutant}_raw"], rh, temp)
            hours.loc[sel, f"{c.pollutant}_calibrated"] = True
    return hours


def describe(calibrations: Calibrations) -> list[dict[str, Any]]:
    """One row per device and calibration, for the report and the CLI."""
    return [{"device": d, "pollutant": c.pollutant, "valid_from": c.valid_from, "valid_to": c.valid_to or "open",
             "hours": c.hours, "r2": c.r2, "rmse": c.rmse, "bias": c.bias, "uncertainty_pct": round(100 * c.uncertainty, 1),
             "dqo_pct": round(100 * c.dqo), "meets_dqo": c.meets_dqo, "reference": c.reference}
            for d, cs in sorted(calibrations.items()) for c in cs]
