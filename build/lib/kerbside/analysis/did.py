"""Difference-in-differences of daily means, with a day-block bootstrap for its uncertainty.

Estimate: for each local day d with valid daily means on both sides,
gap_d = mean over inside sites - mean over outside sites. Then
DiD = mean(gap_d, after) - mean(gap_d, before). Pairing sites by day removes
weather and season common to the whole city, which dominate urban NO2 and PM.

Uncertainty: bootstrap that resamples blocks of `block_days` consecutive days
with replacement, separately before and after. Why not site-clustered errors:
a city rarely has more than a handful of sensor sites per side, far too few
clusters for a cluster-robust variance. Why blocks: pollution is autocorrelated
from day to day; for long series use block_days=7 so the interval is not too
narrow. The interval is a 95 % percentile interval; it describes sampling noise
only, not sensor bias or a different trend inside the zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from kerbside.core.errors import AnalysisError


class DidError(AnalysisError, ValueError):
    pass


@dataclass(frozen=True)
class DidResult:
    pollutant: str
    estimate: float
    ci_low: float
    ci_high: float
    se: float
    before_gap: float
    after_gap: float
    days_before: int
    days_after: int
    n_boot: int
    block_days: int


def daily_gap(days: pd.DataFrame, pollutant: str, zone: str) -> pd.Series:
    """Inside-minus-outside mean of valid daily means, per day (days with both sides only)."""
    ok = days[days[f"{pollutant}_valid"]]
    side = np.where(ok["zone"] == zone, "inside", "outside")
    g = ok.groupby([ok["day"], side])[pollutant].mean().unstack()
    if "inside" not in g or "outside" not in g:
        return pd.Series(dtype=float)
    return (g["inside"] - g["outside"]).dropna()


def _blocks(gap: pd.Series, block_days: int) -> list[np.ndarray]:
    first = min(gap.index)
    ids = np.array([(d - first).days // block_days for d in gap.index])
    return [gap.to_numpy()[ids == b] for b in np.unique(ids)]


def _resample(blocks: list[np.ndarray], rng: np.random.Generator) -> float:
    pick = rng.integers(0, len(blocks), len(blocks))
    return float(np.concatenate([blocks[i] for i in pick]).mean())


def did(days: pd.DataFrame, pollutant: str, zone: str, before: date, after: date,
        n_boot: int = 2000, block_days: int = 1, seed: int = 0) -> DidResult:
    """DiD of `pollutant` between the days before `before` and the days from `after` on.

    Days in [before, after) are a transition (e.g. a phase-in) and are left out.
    """
    check_periods(before, after)
    gap = daily_gap(days, pollutant, zone)
    pre = gap[[d < before for d in gap.index]]
    post = gap[[d >= after for d in gap.index]]
    if len(pre) < 2 or len(post) < 2:
        raise DidError(f"{pollutant}: need at least 2 days with valid daily means inside and outside in each period "
                       f"(have {len(pre)} before, {len(post)} after); widen the range or check capture")
    est = float(post.mean() - pre.mean())
    rng = np.random.default_rng(seed)
    bb, ab = _blocks(pre, block_days), _blocks(post, block_days)
    boots = np.array([_resample(ab, rng) - _resample(bb, rng) for _ in range(n_boot)])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return DidResult(pollutant, est, float(lo), float(hi), float(boots.std(ddof=1)), float(pre.mean()),
                     float(post.mean()), len(pre), len(post), n_boot, block_days)


def check_periods(before: date, after: date) -> None:
    if after < before:
        raise DidError(f"dates the wrong way round: --after {after} is earlier than --before {before}; "
                       "--before is the first day NOT in the before period, --after the first day of the after period")
