"""Hourly/daily means, capture, exceedances, traffic, gaps and the DiD against pandas on the simulated raw data."""

from __future__ import annotations

from datetime import date

import an_sim
import numpy as np
import pandas as pd
import pytest

from kerbside.analysis import query
from kerbside.analysis.did import DidError, did
from kerbside.analysis.timerange import LocalRange

pytestmark = pytest.mark.services  # the real influxd

P = ("pm25", "pm10", "no2")


@pytest.fixture(scope="module")
def expected_hours(sim: an_sim.Sim) -> pd.DataFrame:
    """Independent hourly truth: straight from the generated minutes."""
    m = sim.minutes.assign(hour=sim.minutes["time"].dt.floor("h"))
    g = m.groupby(["device", "hour"])
    out = pd.DataFrame({"capture": g["capture"].sum() / 60})
    for p in P:
        out[p] = g[p].mean()
        out[f"{p}_n"] = g[p].count()
        out[f"{p}_valid"] = np.minimum(out["capture"], out[f"{p}_n"] / 60) >= 0.75
    out = out.reset_index()
    lt = out["hour"].dt.tz_convert(an_sim.TZ)
    out["day"] = lt.dt.date
    out["local_hour"] = lt.dt.hour
    return out


@pytest.fixture(scope="module")
def hours(loaded) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    return query.hourly(loaded.client, loaded.rng)


@pytest.fixture(scope="module")
def days(loaded, hours: pd.DataFrame) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    return query.daily(hours, loaded.rng)


def _one(df: pd.DataFrame, device: str, d: date, h: int) -> pd.Series:
    row = df[(df["device"] == device) & (df["day"] == d) & (df["local_time"].dt.hour == h)]
    assert len(row) == 1, row
    return row.iloc[0]


def test_hourly_means_and_capture_match_raw(hours: pd.DataFrame, expected_hours: pd.DataFrame) -> None:
    got = hours.rename(columns={"time": "hour"}).set_index(["device", "hour"]).sort_index()
    exp = expected_hours.set_index(["device", "hour"]).sort_index()
    assert len(got) == len(exp) == 4 * (28 * 24 - 1) - 7  # 7 hours without any reading
    assert np.allclose(got["capture"], exp["capture"], atol=1e-9)
    for p in P:
        assert (got[f"{p}_valid"] == exp[f"{p}_valid"]).all(), p
        assert np.allclose(got[p], exp[p], rtol=1e-9, equal_nan=True), p
        assert (got[f"{p}_n"] == exp[f"{p}_n"]).all(), p


def test_injected_capture_cases(hours: pd.DataFrame) -> None:
    inj = an_sim.INJECTED
    (d44, h44), (d45, h45) = inj["hour_keep"]
    assert not _one(hours, "a1000001", d44, h44)["no2_valid"]
    assert _one(hours, "a1000001", d44, h44)["capture"] == pytest.approx(44 / 60)
    assert _one(hours, "a1000001", d45, h45)["no2_valid"]
    assert _one(hours, "a1000001", d45, h45)["capture"] == pytest.approx(0.75)
    low = _one(hours, "a1000002", *inj["low_samples_hour"])
    assert low["capture"] == pytest.approx(0.6667, abs=1e-4) and not low["no2_valid"]
    zero = _one(hours, "a1000001", *inj["zero_capture_half_hour"])
    assert zero["readings"] == 60 and zero["capture"] == pytest.approx(0.5) and not zero["pm25_valid"]
    chan = _one(hours, "a1000003", *inj["pm_channel_gap"])
    assert chan["capture"] == pytest.approx(1.0) and chan["pm25_capture"] == pytest.approx(40 / 60)
    assert not chan["pm25_valid"] and chan["no2_valid"]


def test_daily_means_local_days_and_18_hour_rule(days: pd.DataFrame, expected_hours: pd.DataFrame) -> None:
    dst = days[days["day"] == date(2026, 3, 29)]
    assert set(dst["hours_in_day"]) == {23}
    assert set(days[days["day"] == date(2026, 3, 30)]["hours_in_day"]) == {24}
    for p in P:
        v = expected_hours[expected_hours[f"{p}_valid"]].groupby(["device", "day"])[p].agg(["mean", "count"])
        got = days.set_index(["device", "day"]).loc[v.index]
        assert (got[f"{p}_hours"] == v["count"]).all(), p
        assert np.allclose(got[p], v["mean"], rtol=1e-9), p
        assert (got[f"{p}_valid"] == (v["count"] >= 18)).all(), p
    d, missing = an_sim.INJECTED["missing_hours_day"]
    row = days[(days["device"] == "a1000004") & (days["day"] == d)].iloc[0]
    assert row["no2_hours"] == 24 - len(missing) == 17 and not row["no2_valid"]
    assert row["no2_capture"] == pytest.approx(17 / 24)
    assert len(days) == 4 * 28


def test_exceedances_against_limits(hours: pd.DataFrame, days: pd.DataFrame, expected_hours: pd.DataFrame) -> None:
    ex = query.exceedances(hours, days).set_index(["site", "pollutant", "averaging"])
    exp_daily = expected_hours[expected_hours["pm10_valid"]].groupby(["device", "day"])["pm10"].agg(["mean", "count"])
    exp_out_ring = int(((exp_daily["count"] >= 18) & (exp_daily["mean"] > 45)).loc["a1000003"].sum())
    assert exp_out_ring == 3
    assert ex.loc[("out-ring", "pm10", "day"), "count"] == 3
    assert ex.loc[("lez-market", "pm25", "day"), "count"] == 1
    assert ex.loc[("lez-station", "no2", "hour"), "count"] == 2
    assert ex.loc[("lez-market", "no2", "hour"), "count"] == 0
    assert not ex["breach"].any()
    assert ex.loc[("out-ring", "pm10", "day"), "allowed"] == 18


def test_period_means_capture(loaded, hours: pd.DataFrame, expected_hours: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    pm = query.period_means(hours, loaded.rng).set_index("device")
    total = 28 * 24 - 1
    for dev, g in expected_hours.groupby("device"):
        v = g[g["no2_valid"]]
        assert pm.loc[dev, "no2"] == pytest.approx(v["no2"].mean(), rel=1e-9)
        assert pm.loc[dev, "no2_capture"] == pytest.approx(len(v) / total)
    assert pm.loc["a1000004", "no2_capture"] == pytest.approx((total - 7) / total)
    assert pm["no2_valid"].all()


def test_did_matches_independent_estimate(days: pd.DataFrame, expected_hours: pd.DataFrame) -> None:
    v = expected_hours[expected_hours["no2_valid"]].groupby(["device", "day"])["no2"].agg(["mean", "count"]).reset_index()
    v = v[v["count"] >= 18]
    v["inside"] = v["device"].map(lambda d: an_sim.AIR[d][1] == "lez")
    per_day = v.groupby(["day", "inside"])["mean"].mean().unstack()
    gap = per_day[True] - per_day[False]
    after = np.array([d >= an_sim.LEZ_START for d in gap.index])
    expected = gap[after].mean() - gap[~after].mean()
    res = did(days, "no2", "lez", an_sim.LEZ_START, an_sim.LEZ_START, n_boot=500)
    assert res.estimate == pytest.approx(expected, rel=1e-9)
    assert res.days_before == 14 and res.days_after == 14
    assert res.ci_low < res.estimate < res.ci_high
    assert abs(res.estimate - an_sim.TRUE_DID) < 2.0
    assert res.ci_high < 0  # the injected 12 µg/m³ LEZ effect is clearly resolved


def test_did_bad_periods(days: pd.DataFrame) -> None:
    with pytest.raises(DidError, match="wrong way round"):
        did(days, "no2", "lez", date(2026, 4, 1), date(2026, 3, 20))
    with pytest.raises(DidError, match="at least 2 days"):
        did(days, "no2", "lez", date(2026, 3, 17), date(2026, 3, 17))


def test_traffic_by_class_per_hour(loaded, sim: an_sim.Sim) -> None:  # type: ignore[no-untyped-def]
    tr = query.traffic_hourly(loaded.client, loaded.rng)
    t = sim.traffic.assign(hour=sim.traffic["time"].dt.floor("h"))
    exp = t.pivot_table(index=["site", "hour"], columns="cls", values="count", aggfunc="sum")
    got = tr.set_index(["site", "time"]).sort_index()
    exp = exp.sort_index()
    assert len(got) == len(exp) == 2 * (28 * 24 - 1)
    for c in ("car", "heavy", "van", "motorcycle"):
        assert (got[c].to_numpy() == exp[c].to_numpy()).all(), c
    assert np.allclose(got["heavy_share"], (exp["heavy"] / exp.sum(axis=1)).to_numpy())


def test_gaps_per_device(loaded) -> None:  # type: ignore[no-untyped-def]
    g = query.gaps(loaded.client, loaded.rng)
    assert list(g["device"]) == ["a1000001", "a1000004"]
    assert list(g["missing"]) == [0, 420] and list(g["recovered"]) == [True, False]
    assert g.iloc[1]["local_time"].hour == 10


def test_no_data_and_bad_ranges(loaded) -> None:  # type: ignore[no-untyped-def]
    empty = LocalRange(date(2025, 1, 1), date(2025, 1, 2), an_sim.TZ)
    with pytest.raises(query.NoDataError, match="db backfill"):
        query.hourly(loaded.client, empty)
    with pytest.raises(query.NoDataError):
        query.traffic_hourly(loaded.client, empty)
    assert query.gaps(loaded.client, empty).empty
    with pytest.raises(ValueError, match="wrong way round"):
        LocalRange(date(2026, 4, 2), date(2026, 4, 1))
    with pytest.raises(ValueError, match="unknown time zone"):
        LocalRange(date(2026, 4, 1), date(2026, 4, 2), "Mars/Olympus")
    assert query.zones(loaded.client) == {"lez", "outside"}


def test_did_with_transition_window(days: pd.DataFrame, expected_hours: pd.DataFrame) -> None:
    """--before 2026-03-23 --after 2026-03-30: the week in between is a phase-in and left out."""
    v = expected_hours[expected_hours["no2_valid"]].groupby(["device", "day"])["no2"].agg(["mean", "count"]).reset_index()
    v = v[v["count"] >= 18]
    v["inside"] = v["device"].map(lambda d: an_sim.AIR[d][1] == "lez")
    gap = v.groupby(["day", "inside"])["mean"].mean().unstack()
    gap = gap[True] - gap[False]
    pre = gap[[d < date(2026, 3, 23) for d in gap.index]]
    post = gap[[d >= an_sim.LEZ_START for d in gap.index]]
    res = did(days, "no2", "lez", date(2026, 3, 23), an_sim.LEZ_START, n_boot=200)
    assert (res.days_before, res.days_after) == (7, 14)
    assert res.estimate == pytest.approx(post.mean() - pre.mean(), rel=1e-9)


def test_raw_readings_of_a_local_day(loaded, sim: an_sim.Sim) -> None:  # type: ignore[no-untyped-def]
    d = date(2026, 3, 29)  # the 23-hour DST day
    df = query.readings(loaded.client, LocalRange(d, d, an_sim.TZ), "air", sites=["out-park"])
    exp = sim.minutes[(sim.minutes["device"] == "a1000004") & (sim.minutes["day"] == d)]
    assert len(df) == len(exp) == 23 * 60
    assert set(df["day"]) == {d} and df["no2"].sum() == pytest.approx(exp["no2"].sum())


def test_traffic_capture_per_node(loaded, sim: an_sim.Sim) -> None:  # type: ignore[no-untyped-def]
    tc = query.traffic_capture(loaded.client, loaded.rng).set_index(["device", "direction"])
    expected_readings = (28 * 24 - 1) * 4  # 15-min readings over 671 hours
    for (dev, direction), g in sim.flow.groupby(["device", "direction"]):
        assert tc.loc[(dev, direction), "capture"] == pytest.approx(len(g) / expected_readings)
    assert tc.loc[("b1000002", "out"), "capture"] == pytest.approx((expected_readings - 4) / expected_readings)
    assert tc.loc[("b1000001", "in"), "capture"] == pytest.approx(1.0)
