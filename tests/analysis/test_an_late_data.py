"""What continuous queries do with late, back-filled readings, against the real influxd (CQ run-interval 1 s)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kerbside.analysis.influx import Influx
from kerbside.analysis.schema import Layout, backfill, init_db
from kerbside.devstack import wait_for

pytestmark = pytest.mark.services  # the real influxd


def _lines(hour: datetime, minutes: range, no2: float = 40.0) -> list[str]:
    ns = int(hour.timestamp()) * 10**9
    return [f"air,device=c0ffee01,kit=air,site=s1,zone=lez capture=1.0,no2={no2},samples=6i,seq={m}i "
            f"{ns + m * 60 * 10**9}" for m in minutes]


def _hour_row(client: Influx, hour: datetime) -> dict | None:
    s = client.query(f'SELECT readings, no2, capture_sum FROM "agg"."air_1h" WHERE time = {int(hour.timestamp())}s')
    return dict(zip(s[0]["columns"], s[0]["values"][0], strict=True)) if s else None


@pytest.fixture
def client(influx) -> Influx:  # type: ignore[no-untyped-def]
    c = Influx(influx.url, influx.db)
    init_db(c, Layout(influx.db, resample_every="1s", resample_for="2h"))
    yield c
    c.close()


def test_db_init_layout(client: Influx) -> None:
    rps = {r[0]: r for s in client.query(f'SHOW RETENTION POLICIES ON "{client.db}"') for r in s["values"]}
    assert rps["raw"][1] == "9600h0m0s" and rps["raw"][4] is True  # 400 days, the default RP
    assert rps["agg"][1] == "0s" and rps["unsynced"][1] == "0s"  # kept forever
    cqs = {r[0]: r[1] for s in client.query("SHOW CONTINUOUS QUERIES") if s["name"] == client.db for r in s["values"]}
    assert set(cqs) == {"air_1h", "traffic_1h", "traffic_flow_1h"}
    assert "RESAMPLE EVERY 1s FOR 2h" in cqs["air_1h"] and "count(no2) AS no2_n" in cqs["air_1h"]
    # idempotent: a second init alters instead of failing, and changes the raw duration
    init_db(client, Layout(client.db, raw_duration="30d", resample_every="1s", resample_for="2h"))
    rps = {r[0]: r for s in client.query(f'SHOW RETENTION POLICIES ON "{client.db}"') for r in s["values"]}
    assert rps["raw"][1] == "720h0m0s"


def test_late_data_within_resample_window_is_picked_up(client: Influx) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    client.write(_lines(hour, range(0, 30)))
    wait_for(lambda: (_hour_row(client, hour) or {}).get("readings") == 30, "first 30 readings aggregated")
    client.write(_lines(hour, range(30, 60), no2=80.0))  # the node back-fills the second half
    wait_for(lambda: (_hour_row(client, hour) or {}).get("readings") == 60, "back-filled readings re-aggregated")
    row = _hour_row(client, hour)
    assert row is not None and row["no2"] == pytest.approx(60.0) and row["capture_sum"] == pytest.approx(60.0)


def test_late_data_beyond_window_needs_backfill(client: Influx) -> None:
    now_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    old = now_hour - timedelta(hours=5)
    client.write(_lines(old, range(0, 50)))
    # Prove the CQ ran after the old write: a fresh reading in the window gets aggregated...
    recent = now_hour - timedelta(hours=1)
    client.write(_lines(recent, range(0, 1)))
    wait_for(lambda: _hour_row(client, recent) is not None, "a CQ run after the late write")
    # ...but the hour outside RESAMPLE FOR was never recomputed.
    assert _hour_row(client, old) is None
    written = backfill(client, old, old + timedelta(minutes=1))
    assert written >= 1
    row = _hour_row(client, old)
    assert row is not None and row["readings"] == 50 and row["no2"] == pytest.approx(40.0)
    # Backfill is idempotent: running it again writes the same values, no duplicates.
    backfill(client, old, old + timedelta(hours=1))
    assert _hour_row(client, old) == row


def test_backfill_rejects_bad_ranges(client: Influx) -> None:
    t = datetime(2026, 3, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="empty range"):
        backfill(client, t, t)
    with pytest.raises(ValueError, match="time-zone-aware"):
        backfill(client, datetime(2026, 3, 1), datetime(2026, 3, 2))
