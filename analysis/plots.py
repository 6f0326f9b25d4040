"""The report's figures: a colour-blind-safe palette, legends outside the data, units on every axis.

Palette: Okabe & Ito (2008), distinguishable with every common colour-vision deficiency; inside the
zone is always blue and outside always orange, before grey and after green, in every figure. Plots
never draw one line per site (20 sites would repeat colours): sites appear in tables and the
capture heatmap, whose colour map (cividis) is ordered in lightness and colour-blind safe.
Every function returns PNG bytes; an empty input gives a figure that says what is missing, never
a crash.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import date

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

INSIDE, OUTSIDE = "#0072B2", "#E69F00"  # blue, orange
BEFORE, AFTER = "#999999", "#009E73"  # grey, bluish green
LIMIT = "#D55E00"  # vermillion
SIDE_COLOUR = {"inside": INSIDE, "outside": OUTSIDE}
PERIOD_COLOUR = {"before": BEFORE, "after": AFTER}
UNIT = "µg/m³"

_STYLE = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 110,
          "legend.frameon": False}


def _png(fig) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _legend_outside(ax) -> None:  # type: ignore[no-untyped-def]
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _empty(ax, text: str) -> None:  # type: ignore[no-untyped-def]
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555")
    ax.set_xticks([])
    ax.set_yticks([])


def did_forest(rows: Sequence[dict]) -> bytes:
    """Each pollutant's difference-in-differences with its 95 % interval, zero marked."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.2, 0.55 + 0.5 * max(1, len(rows))))
        if not rows:
            _empty(ax, "no estimate: too few valid days on a side")
        else:
            labels = [r["label"] for r in rows][::-1]
            est = np.array([r["estimate"] for r in rows][::-1])
            lo = np.array([r["ci_low"] for r in rows][::-1])
            hi = np.array([r["ci_high"] for r in rows][::-1])
            y = np.arange(len(rows))
            ax.errorbar(est, y, xerr=[est - lo, hi - est], fmt="o", color=INSIDE, ecolor=INSIDE, capsize=4)
            ax.axvline(0, color="#333", lw=0.8)
            ax.set_yticks(y, labels)
            ax.set_xlabel(f"change inside relative to outside, {UNIT} (95 % interval)")
            span = max(1.0, float(np.nanmax(np.abs(np.concatenate([lo, hi])))) * 1.15)
            ax.set_xlim(-span, span)
        return _png(fig)


def period_means(table: pd.DataFrame, label: str) -> bytes:
    """Side x period means of one pollutant with 95 % intervals (no limit lines: see the report text)."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.2, 2.6))
        t = table.dropna(subset=["mean"])
        if t.empty:
            _empty(ax, f"no valid {label} hours in either period")
        else:
            x = {"inside": 0, "outside": 1}
            for period, dx in (("before", -0.18), ("after", 0.18)):
                sel = t[t["period"] == period]
                if sel.empty:
                    continue
                xs = [x[s] + dx for s in sel["side"]]
                err = np.array([(sel["mean"] - sel["ci_low"]).fillna(0), (sel["ci_high"] - sel["mean"]).fillna(0)])
                ax.bar(xs, sel["mean"], width=0.34, color=PERIOD_COLOUR[period], label=period)
                ax.errorbar(xs, sel["mean"], yerr=err, fmt="none", ecolor="#222", capsize=4, lw=1)
            ax.set_xticks([0, 1], ["inside the zone", "outside"])
            ax.set_ylabel(f"{label}, {UNIT}")
            ax.set_ylim(bottom=0)
            _legend_outside(ax)
        return _png(fig)


def daily_sides(per_day: pd.DataFrame, label: str, after: date, daily_limit: float | None) -> bytes:
    """Daily means inside and outside (mean of the sites' valid daily means), the after period marked."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(8.5, 2.8))
        if per_day.empty:
            _empty(ax, f"no valid daily {label} mean")
        else:
            for side in ("inside", "outside"):
                if side in per_day:
                    s = per_day[side].dropna()
                    ax.plot(pd.to_datetime(s.index), s.to_numpy(), marker="o", ms=3, color=SIDE_COLOUR[side],
                            label=f"{side} the zone" if side == "inside" else "outside")
            ax.axvline(pd.Timestamp(after), color="#333", ls=":", lw=1, label="after period starts")
            if daily_limit is not None:
                ax.axhline(daily_limit, color=LIMIT, ls="--", lw=1, label=f"EU 2030 daily limit {daily_limit:g}")
            ax.set_ylabel(f"{label} daily mean, {UNIT}")
            ax.set_xlabel("local day")
            ax.set_ylim(bottom=0)
            fig.autofmt_xdate()
            _legend_outside(ax)
        return _png(fig)


def traffic_profile(profile: pd.DataFrame) -> bytes:
    """Mean vehicles per hour of day, before vs after, per side (matched weekday-hours only)."""
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(8.5, 2.6), sharey=True)
        for ax, side in zip(axes, ("inside", "outside"), strict=True):
            sel = profile[profile["side"] == side]
            if sel.empty:
                _empty(ax, f"no traffic counts {side}")
                continue
            for period in ("before", "after"):
                p = sel[sel["period"] == period].sort_values("hour")
                ax.plot(p["hour"], p["total"], color=PERIOD_COLOUR[period], marker=".", label=period)
            ax.set_title("inside the zone" if side == "inside" else "outside")
            ax.set_xlabel("local hour of day")
            ax.set_xticks(range(0, 24, 3))
        axes[0].set_ylabel("vehicles per hour per site")
        _legend_outside(axes[1])
        return _png(fig)


def capture_heatmap(cap: pd.DataFrame) -> bytes:
    """Data capture (%) per node (rows) and local day (columns)."""
    with plt.rc_context(_STYLE):
        if cap.empty:
            fig, ax = plt.subplots(figsize=(8.5, 1.5))
            _empty(ax, "no readings in the range")
            return _png(fig)
        fig, ax = plt.subplots(figsize=(8.5, 0.6 + 0.22 * len(cap)))
        im = ax.imshow(cap.to_numpy(float), aspect="auto", cmap="cividis", vmin=0, vmax=100, interpolation="nearest")
        ax.set_yticks(range(len(cap)), list(cap.index), fontsize=7)
        step = max(1, len(cap.columns) // 14)
        ax.set_xticks(range(0, len(cap.columns), step), [f"{d:%d %b}" for d in cap.columns[::step]], fontsize=7)
        ax.set_xlabel("local day")
        ax.set_ylabel("node (site)")
        bar = fig.colorbar(im, ax=ax, pad=0.01, fraction=0.04)
        bar.set_label("data capture, % of readings expected")
        return _png(fig)
