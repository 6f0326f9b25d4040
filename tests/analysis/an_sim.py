"""A compressed simulated month for the analyst tests: 4 air sites at 1-min resolution, 2 traffic sites.

Everything the tests check is injected here on purpose and listed in INJECTED,
so each expected number in the tests can be traced to a line of this file.
The frame `minutes` is the ground truth the tests recompute expectations from
with plain pandas, independently of analysis.query.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd

TZ = "Europe/Brussels"
FIRST, LAST = date(2026, 3, 16), date(2026, 4, 12)  # DST starts 2026-03-29 (a 23-hour local day)
LEZ_START = date(2026, 3, 30)
PERIOD = 60
EXPECTED = 6  # samples per reading
AIR = {  # device: (site, zone, lat, lon)
    "a1000001": ("lez-market", "lez", 50.8466, 4.3528),
    "a1000002": ("lez-station", "lez", 50.8450, 4.3570),
    "a1000003": ("out-ring", "outside", 50.8600, 4.3300),
    "a1000004": ("out-park", "outside", 50.8300, 4.3900),
}
TRAFFIC = {"b1000001": ("lez-market", "lez", 50.8467, 4.3529), "b1000002": ("out-ring", "outside", 50.8601, 4.3301)}
TRAFFIC_INTERVAL = 900
NO2_BASE = {("lez", False): 40.0, ("lez", True): 30.0, ("outside", False): 30.0, ("outside", True): 32.0}
TRUE_DID = (30.0 - 40.0) - (32.0 - 30.0)


def local(d: date, hour: int, minute: int = 0) -> pd.Timestamp:
    return pd.Timestamp(datetime(d.year, d.month, d.day, hour, minute), tz=TZ).tz_convert("UTC")


@dataclass
class Sim:
    minutes: pd.DataFrame
    traffic: pd.DataFrame
    flow: pd.DataFrame
    gaps: list[str]

    def lines(self) -> list[str]:
        out = []
        for r in self.minutes.itertuples(index=False):
            tags = f"air,device={r.device},kit=air,site={r.site},zone={r.zone}"
            if r.capture == 0:
                out.append(f"{tags} boot=1i,capture=0.0,samples=0i,seq={r.seq}i {r.ns}")
                continue
            f = [f"boot=1i,capture={r.capture:.4f}"]
            for k in ("pm1", "pm25", "pm10", "no2", "co2", "temp", "rh", "pressure"):
                v = getattr(r, k)
                if not np.isnan(v):
                    f.append(f"{k}={v!r}")
            f.append(f"samples={r.samples}i,seq={r.seq}i")
            out.append(f"{tags} {','.join(f)} {r.ns}")
        for r in self.traffic.itertuples(index=False):
            out.append(f"traffic,class={r.cls},device={r.device},direction={r.direction},kit=traffic,site={r.site},"
                       f"zone={r.zone} count={r.count}i {r.ns}")
        for r in self.flow.itertuples(index=False):
            out.append(f"traffic_flow,device={r.device},direction={r.direction},kit=traffic,site={r.site},zone={r.zone} "
                       f"boot=1i,capture=1.0,interval={TRAFFIC_INTERVAL}i,samples={TRAFFIC_INTERVAL}i,seq={r.seq}i,"
                       f"speed={r.speed!r},vehicles={r.vehicles}i {r.ns}")
        return out + self.gaps


def simulate(seed: int = 7) -> Sim:
    rng = np.random.default_rng(seed)
    start, end = local(FIRST, 0), local(LAST + timedelta(days=1), 0)
    t = pd.date_range(start, end, freq=f"{PERIOD}s", inclusive="left")
    lt = t.tz_convert(TZ)
    days = np.array(lt.date)
    after = days >= LEZ_START
    hour = lt.hour.to_numpy()
    diurnal = 8 * np.sin((hour - 6) / 24 * 2 * np.pi)
    day_index = np.array([(d - FIRST).days for d in days])
    weather = rng.normal(0, 4, (LAST - FIRST).days + 1)[day_index]  # shared by all sites on a day
    frames = []
    for i, (dev, (site, zone, _, _)) in enumerate(AIR.items()):
        n = len(t)
        base = np.where(after, NO2_BASE[(zone, True)], NO2_BASE[(zone, False)])
        df = pd.DataFrame({
            "time": t, "device": dev, "site": site, "zone": zone, "day": days,
            "no2": base + diurnal + weather + rng.normal(0, 3, n) + i,
            "pm25": 11 + 0.3 * weather + rng.normal(0, 1.5, n),
            "pm10": 20 + 0.5 * weather + rng.normal(0, 2, n),
            "pm1": 6 + rng.normal(0, 0.5, n), "co2": 420 + rng.normal(0, 5, n),
            "temp": 10 + rng.normal(0, 1, n), "rh": 70 + rng.normal(0, 2, n), "pressure": 1010 + rng.normal(0, 1, n),
            "samples": EXPECTED, "seq": np.arange(n) + 1000,
        })
        frames.append(df)
    m = pd.concat(frames, ignore_index=True)
    lt_all = m["time"].dt.tz_convert(TZ)
    lday, lhour = lt_all.dt.date, lt_all.dt.hour

    def sel(dev: str, d: date, h: int | None = None) -> pd.Series:
        s = (m["device"] == dev) & (lday == d)
        return s & (lhour == h) if h is not None else s

    # Exceedance days: PM10 60 all day at out-ring on 3 days; PM2.5 30 at lez-market on 1 day.
    for d in INJECTED["pm10_days_out_ring"]:
        m.loc[sel("a1000003", d), "pm10"] = 60.0
    m.loc[sel("a1000001", INJECTED["pm25_day_lez_market"]), "pm25"] = 30.0
    # NO2 hourly exceedances: 250 µg/m³ for two local hours at lez-station.
    for h in INJECTED["no2_hours_lez_station"][1]:
        m.loc[sel("a1000002", INJECTED["no2_hours_lez_station"][0], h), "no2"] = 250.0
    # Partial channel: 20 readings without PM (pm1/pm25/pm10) in one hour: PM hour invalid, NO2 valid.
    d, h = INJECTED["pm_channel_gap"]
    idx = m.index[sel("a1000003", d, h)][:20]
    m.loc[idx, ["pm1", "pm25", "pm10"]] = np.nan
    # Low per-reading capture: every reading 4/6 samples in one hour -> hour capture 0.667, invalid.
    d, h = INJECTED["low_samples_hour"]
    m.loc[sel("a1000002", d, h), "samples"] = 4
    # Zero-capture readings (present, no values) for half an hour -> capture 0.5, invalid.
    d, h = INJECTED["zero_capture_half_hour"]
    idx = m.index[sel("a1000001", d, h)][:30]
    m.loc[idx, ["pm1", "pm25", "pm10", "no2", "co2", "temp", "rh", "pressure"]] = np.nan
    m.loc[idx, "samples"] = 0
    m["capture"] = (m["samples"] / EXPECTED).round(4)
    # Missing readings: 44 of 60 (invalid) and 45 of 60 (valid, exactly 75 %).
    drop = []
    for (d, h), keep in INJECTED["hour_keep"].items():
        drop += list(m.index[sel("a1000001", d, h)][keep:])
    # A day with 7 hours missing -> 17 valid hours -> invalid day.
    d, hours = INJECTED["missing_hours_day"]
    for h in hours:
        drop += list(m.index[sel("a1000004", d, h)])
    m = m.drop(index=drop).reset_index(drop=True)
    values = ["pm1", "pm25", "pm10", "no2", "co2", "temp", "rh", "pressure"]
    m[values] = m[values].round(2)  # what the line protocol carries is what the tests expect
    m["ns"] = m["time"].dt.as_unit("ns").astype("int64")
    gap_d, gap_hours = INJECTED["missing_hours_day"]
    gap_t = local(gap_d, gap_hours[0])
    first_seq = int(frames[3].loc[frames[3]["time"] == gap_t, "seq"].iloc[0])
    gaps = [
        f"kerbside_gaps,device=a1000004,kit=air,site=out-park,zone=outside first_seq={first_seq}i,"
        f"last_seq={first_seq + 419}i,missing=420i,period=60i {gap_t.value}",
        f"kerbside_gaps,device=a1000001,kit=air,site=lez-market,zone=lez first_seq=5000i,last_seq=5009i,"
        f"missing=0i,period=60i {local(date(2026, 3, 19), 2).value}",
    ]
    return Sim(m, *_traffic(rng), gaps)


def _traffic(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    t = pd.date_range(local(FIRST, 0), local(LAST + timedelta(days=1), 0), freq=f"{TRAFFIC_INTERVAL}s", inclusive="left")
    after = np.array(t.tz_convert(TZ).date) >= LEZ_START
    rows, flows = [], []
    for dev, (site, zone, _, _) in TRAFFIC.items():
        for direction in ("in", "out"):
            heavy_mean = np.where(after & (zone == "lez"), 1.0, 6.0)
            counts = {"motorcycle": rng.poisson(2, len(t)), "car": rng.poisson(40, len(t)),
                      "van": rng.poisson(8, len(t)), "heavy": rng.poisson(heavy_mean)}
            for cls, c in counts.items():
                rows.append(pd.DataFrame({"time": t, "device": dev, "site": site, "zone": zone, "direction": direction,
                                          "cls": cls, "count": c}))
            veh = sum(counts.values())
            flows.append(pd.DataFrame({"time": t, "device": dev, "site": site, "zone": zone, "direction": direction,
                                       "vehicles": veh, "speed": rng.uniform(25, 45, len(t)),
                                       "seq": np.arange(len(t)) + 1}))
    traffic, flow = pd.concat(rows, ignore_index=True), pd.concat(flows, ignore_index=True)
    d, h = INJECTED["traffic_flow_missing_hour"]
    lost = (flow["device"] == "b1000002") & (flow["direction"] == "out") & (flow["time"] >= local(d, h)) & (
        flow["time"] < local(d, h + 1))
    flow = flow[~lost].reset_index(drop=True)
    flow["speed"] = flow["speed"].round(1)
    for df in (traffic, flow):
        df["ns"] = df["time"].dt.as_unit("ns").astype("int64")
    return traffic, flow


INJECTED: dict = {
    "pm10_days_out_ring": [date(2026, 3, 18), date(2026, 3, 19), date(2026, 4, 2)],
    "pm25_day_lez_market": date(2026, 4, 8),
    "no2_hours_lez_station": (date(2026, 4, 1), [8, 9]),
    "pm_channel_gap": (date(2026, 3, 24), 9),
    "low_samples_hour": (date(2026, 3, 25), 14),
    "zero_capture_half_hour": (date(2026, 3, 26), 3),
    "hour_keep": {(date(2026, 3, 17), 11): 44, (date(2026, 3, 17), 12): 45},
    "missing_hours_day": (date(2026, 3, 20), list(range(10, 17))),
    "traffic_flow_missing_hour": (date(2026, 4, 5), 7),
}
