"""95 % intervals for the means the report shows: a bootstrap that resamples whole local days.

Why days: hourly concentrations are strongly autocorrelated within a day (rush hours, the boundary
layer), so treating hours as independent would give intervals several times too narrow. Resampling
whole days keeps each day's hours together; `block_days` > 1 also keeps runs of days together for
long series (day-to-day weather persistence), as in the difference-in-differences (analysis.did).

Deterministic: a fixed seed, so a report rebuilt from the same data shows the same intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

MIN_DAYS = 2
"""An interval needs at least two days to resample; with fewer the mean is shown without one."""


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    days: int
    """Days that contributed at least one value."""
    n: int
    """Values (hours) in the mean."""

    @property
    def known(self) -> bool:
        return not np.isnan(self.mean)

    def as_dict(self, digits: int = 3) -> dict[str, float | int | None]:
        def r(x: float) -> float | None:
            return None if np.isnan(x) else round(float(x), digits)

        return {"mean": r(self.mean), "ci_low": r(self.low), "ci_high": r(self.high), "days": self.days, "n": self.n}


NONE = Interval(float("nan"), float("nan"), float("nan"), 0, 0)


def day_block_mean(values: pd.Series, days: pd.Series, n_boot: int = 1000, block_days: int = 1,
                   seed: int = 0) -> Interval:
    """Mean of `values` with a 95 % percentile interval from resampling blocks of days with replacement.

    `days` holds each value's local day. NaNs are dropped first (they are not valid values)."""
    ok = values.notna().to_numpy()
    v = values.to_numpy(dtype=float)[ok]
    d = days.to_numpy()[ok]
    if len(v) == 0:
        return NONE
    mean = float(v.mean())
    uniq = sorted(set(d))
    if len(uniq) < MIN_DAYS:
        return Interval(mean, float("nan"), float("nan"), len(uniq), len(v))
    first: date = uniq[0]
    block = np.array([(x - first).days // block_days for x in d])
    ids = np.unique(block)
    sums = np.array([v[block == b].sum() for b in ids])
    counts = np.array([(block == b).sum() for b in ids])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), (n_boot, len(ids)))
    boots = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return Interval(mean, float(lo), float(hi), len(uniq), len(v))
