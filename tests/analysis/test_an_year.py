"""A simulated calendar year at hourly resolution: annual means, the 90 % rule, a breached daily limit, both DST days."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from kerbside.analysis import query
from kerbside.analysis.influx import Influx
from kerbside.analysis.schema import Layout, backfill, init_db
from kerbside.analysis.timerange import LocalRange

pytestmark = pytest.mark.services  # the real influxd

TZ = "Europe/Brussels"
YEAR = LocalRange(date(2026, 1, 1), date(2026, 12, 31), TZ)
PM10_DAYS = [date(2026, 2, d) for d in range(1, 21)]  # 20 days over 45: more than the 18 allowed


@pytest.fixture(scope="module")
def year(influxd) -> tuple[Influx, pd.DataFrame]:  # type: ignore[no-untyped-def]
    """Two sites, one reading per hour (period 3600 s); y2 loses every 7th hour (85.7 % capture)."""
    client = Influx(influxd.url, "an_year")
    client.query('DROP DATABASE "an_year"', post=True)
    init_db(client, Layout("an_year", raw_duration="INF"))
    t = pd.date_range(YEAR.start, YEAR.end, freq="h", inclusive="left").tz_convert("UTC")
    rng = np.random.default_rng(3)
    frames = []
    for dev, site, zone, no2 in (("y1", "year-lez", "lez", 25.0), ("y2", "year-out", "outside", 18.0)):
        df = pd.DataFrame({"time": t, "device": dev, "site": site, "zone": zone,
                           "no2": (no2 + rng.normal(0, 5, len(t))).round(2),
                           "pm10": (30 + rng.normal(0, 3, len(t))).round(2)})
        df["day"] = df["time"].dt.tz_convert(TZ).dt.date
        if dev == "y1":
            df.loc[df["day"].isin(PM10_DAYS), "pm10"] = 50.0
        else:
            df = df[np.arange(len(df)) % 7 != 0]
        frames.append(df)
    raw = pd.concat(frames, ignore_index=True)
    ns = raw["time"].dt.as_unit("ns").astype("int64")
    lines = [f"air,device={r.device},kit=air,site={r.site},zone={r.zone} capture=1.0,no2={r.no2!r},pm10={r.pm10!r},"
             f"samples=6i,seq={i}i {n}" for i, (r, n) in enumerate(zip(raw.itertuples(), ns, strict=True))]
    client.write(lines)
    backfill(client, YEAR.start, YEAR.end)
    yield client, raw
    client.query('DROP DATABASE "an_year"', post=True)
    client.close()


def test_year(year: tuple[Influx, pd.DataFrame]) -> None:
    client, raw = year
    hours = query.hourly(client, YEAR, period_s=3600)
    assert len(hours) == len(raw)
    days = query.daily(hours, YEAR)
    assert days.groupby("device")["hours_in_day"].sum().to_dict() == {"y1": 8760, "y2": 8760}
    assert set(days.loc[days["day"] == date(2026, 3, 29), "hours_in_day"]) == {23}
    assert set(days.loc[days["day"] == date(2026, 10, 25), "hours_in_day"]) == {25}
    oct25 = raw[(raw["device"] == "y1") & (raw["day"] == date(2026, 10, 25))]
    assert len(oct25) == 25
    got = days[(days["device"] == "y1") & (days["day"] == date(2026, 10, 25))].iloc[0]
    assert got["no2"] == pytest.approx(oct25["no2"].mean(), rel=1e-9) and got["no2_hours"] == 25

    means = query.period_means(hours, YEAR).set_index("device")
    for dev, g in raw.groupby("device"):
        assert means.loc[dev, "no2"] == pytest.approx(g["no2"].mean(), rel=1e-9)
        assert means.loc[dev, "no2_capture"] == pytest.approx(len(g) / 8760)
    assert means.loc["y1", "no2_valid"] and not means.loc["y2", "no2_valid"]  # 85.7 % < 90 %

    ex = query.exceedances(hours, days).set_index(["device", "pollutant", "averaging"])
    exp_days = raw.groupby(["device", "day"])["pm10"].agg(["mean", "count"])
    exp = int(((exp_days["count"] >= 18) & (exp_days["mean"] > 45)).loc["y1"].sum())
    assert exp == 20
    row = ex.loc[("y1", "pm10", "day")]
    assert row["count"] == 20 and row["allowed"] == 18 and bool(row["breach"])
    assert row["valid_periods"] == 365
    assert not ex.loc[("y2", "pm10", "day"), "breach"]
    who = query.exceedances(hours, days, "WHO2021").set_index(["device", "pollutant", "averaging"])
    exp_no2 = raw.groupby(["device", "day"])["no2"].mean().loc["y1"]  # y1 is complete: every day valid
    assert who.loc[("y1", "no2", "day"), "count"] == int((exp_no2 > 25).sum()) > 0  # NO2 daily guideline 25
    assert who.loc[("y1", "no2", "day"), "allowed"] == 4
