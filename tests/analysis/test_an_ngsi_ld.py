"""NGSI-LD export: entities validate against the shipped Smart Data Models schemas and reach a loopback broker."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import an_sim
import pytest
from an_broker import Broker

from kerbside.analysis import ngsi_ld
from kerbside.analysis.ngsi_ld_schema import errors, key_values
from kerbside.analysis.timerange import LocalRange
from kerbside.core.registry import Device, Registry

pytestmark = pytest.mark.services  # the real influxd

DAY = date(2026, 4, 1)


@pytest.fixture(scope="module")
def devices(loaded) -> dict[str, Device]:  # type: ignore[no-untyped-def]
    return Registry(loaded.registry).load()


@pytest.fixture(scope="module")
def entities(loaded, devices: dict[str, Device]) -> dict[str, list[dict]]:  # type: ignore[no-untyped-def]
    return ngsi_ld.build(loaded.client, LocalRange(DAY, DAY, an_sim.TZ), devices)


def test_entities_validate_and_carry_the_hourly_values(entities: dict[str, list[dict]], sim: an_sim.Sim) -> None:
    air, traffic = entities["AirQualityObserved"], entities["TrafficFlowObserved"]
    assert len(air) == 4 * 24
    assert len(traffic) == 2 * 2 * 24 * (1 + 4)  # devices x directions x hours x (total + 4 classes)
    assert all(errors(e) == [] for e in air + traffic)
    e = next(x for x in air if x["id"] == "urn:ngsi-ld:AirQualityObserved:kerbside:a1000002:20260401T06Z")
    assert e["dateObserved"]["value"]["@value"] == "2026-04-01T06:00:00Z"  # 08:00 local (CEST) = 06:00 UTC
    assert e["location"]["value"] == {"type": "Point", "coordinates": [4.3570, 50.8450]}
    assert e["no2"] == {"type": "Property", "value": 250.0, "unitCode": "GQ"}
    assert e["reliability"]["value"] == 1.0 and e["areaServed"]["value"] == "lez"
    m = sim.minutes
    raw = m[(m["device"] == "a1000002") & (m["time"].dt.floor("h") == e["dateObserved"]["value"]["@value"])]
    assert e["pm25"]["value"] == pytest.approx(raw["pm25"].mean(), abs=1e-4)
    assert e["relativeHumidity"]["value"] == pytest.approx(raw["rh"].mean() / 100, abs=1e-4)
    kv = key_values(e)
    assert kv["dateObserved"] == "2026-04-01T06:00:00Z" and "@context" not in kv
    t = next(x for x in traffic if x["id"] == "urn:ngsi-ld:TrafficFlowObserved:kerbside:b1000001:in:heavy:20260401T06Z")
    raw_t = sim.traffic[(sim.traffic["device"] == "b1000001") & (sim.traffic["direction"] == "in")
                        & (sim.traffic["cls"] == "heavy") & (sim.traffic["time"].dt.floor("h") == "2026-04-01T06:00:00Z")]
    assert t["intensity"]["value"] == int(raw_t["count"].sum()) and t["vehicleType"]["value"] == "lorry"
    assert t["laneDirection"]["value"] == "forward"


def test_reliability_reflects_capture(loaded, devices: dict[str, Device]) -> None:  # type: ignore[no-untyped-def]
    d, h = an_sim.INJECTED["zero_capture_half_hour"]
    ents = ngsi_ld.build(loaded.client, LocalRange(d, d, an_sim.TZ), devices)["AirQualityObserved"]
    utc_hour = an_sim.local(d, h).strftime("%Y%m%dT%HZ")
    e = next(x for x in ents if x["id"].endswith(f"a1000001:{utc_hour}"))
    assert e["reliability"]["value"] == pytest.approx(0.5)


def test_schema_rejects_bad_entities(entities: dict[str, list[dict]]) -> None:
    good = entities["AirQualityObserved"][0]
    bad = json.loads(json.dumps(good))
    bad["no2"]["value"] = -3.0
    bad["reliability"]["value"] = 1.2
    del bad["location"]
    msgs = errors(bad)
    assert len(msgs) == 3 and any("location" in m for m in msgs)
    t = json.loads(json.dumps(entities["TrafficFlowObserved"][0]))
    t["laneDirection"]["value"] = "sideways"
    assert errors(t) and "sideways" in errors(t)[0]


def test_current_entities_have_stable_ids(loaded, devices: dict[str, Device]) -> None:  # type: ignore[no-untyped-def]
    ents = ngsi_ld.build(loaded.client, loaded.rng, devices, current=True)
    ids = sorted(e["id"] for e in ents["AirQualityObserved"])
    assert ids == [f"urn:ngsi-ld:AirQualityObserved:kerbside:{d}" for d in sorted(an_sim.AIR)]
    assert {e["dateObserved"]["value"]["@value"] for e in ents["AirQualityObserved"]} == {"2026-04-12T21:00:00Z"}


def test_files_and_post_to_loopback_broker(entities: dict[str, list[dict]], tmp_path: Path) -> None:
    paths = ngsi_ld.write_files(entities, tmp_path)
    assert [p.name for p in paths] == ["AirQualityObserved.jsonld", "TrafficFlowObserved.jsonld"]
    assert json.loads(paths[0].read_text()) == entities["AirQualityObserved"]
    with Broker() as broker:
        n = ngsi_ld.post(entities, broker.url, batch=100)
    total = sum(len(v) for v in entities.values())
    assert n == total == sum(len(b) for b in broker.batches)
    assert len(broker.batches) == -(-total // 100)
    assert set(broker.content_types) == {"application/ld+json"}
    assert broker.batches[0][0]["@context"][-1] == ngsi_ld.CORE_CONTEXT


def test_broker_errors_are_clear(entities: dict[str, list[dict]]) -> None:
    with Broker(status=207) as broker, pytest.raises(ngsi_ld.ExportError, match=r"HTTP 207 .*\(0 entities sent"):
        ngsi_ld.post(entities, broker.url)
    with Broker() as broker:
        url = broker.url
    with pytest.raises(ngsi_ld.ExportError, match="cannot reach the NGSI-LD broker"):
        ngsi_ld.post(entities, url)


def test_missing_location_and_no_data(loaded, devices: dict[str, Device]) -> None:  # type: ignore[no-untyped-def]
    no_loc = dict(devices)
    no_loc["a1000001"] = Device("a1000001", "air", "lez-market", "lez")
    with pytest.raises(ngsi_ld.ExportError, match="a1000001 has no lat/lon"):
        ngsi_ld.build(loaded.client, LocalRange(DAY, DAY, an_sim.TZ), no_loc)
    with pytest.raises(ngsi_ld.ExportError, match="nothing to export"):
        ngsi_ld.build(loaded.client, LocalRange(date(2025, 1, 1), date(2025, 1, 1), an_sim.TZ), devices)
