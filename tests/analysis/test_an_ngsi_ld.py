"""NGSI-LD export: one entity per device, Device entities, temporal history; every snapshot validates against the
shipped current Smart Data Models schemas, observedAt everywhere; negative NO2 never fails a batch."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import an_sim
import pandas as pd
import pytest
from an_broker import Broker

from kerbside.analysis import ngsi_ld
from kerbside.analysis.ngsi_ld_schema import SCHEMAS, errors, key_values, validator
from kerbside.analysis.timerange import LocalRange
from kerbside.core.registry import Device, Registry

DAY = date(2026, 4, 1)


def _walk(entity: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every Property, GeoProperty and Relationship, sub-properties and dataset instances included."""
    out = []

    def visit(name: str, v: Any) -> None:
        if isinstance(v, list):
            for x in v:
                visit(name, x)
        elif isinstance(v, dict) and v.get("type") in ("Property", "GeoProperty", "Relationship"):
            out.append((name, v))
            for k, sub in v.items():
                if k not in ("type", "value", "object", "observedAt", "unitCode", "datasetId"):
                    visit(f"{name}.{k}", sub)

    for k, v in entity.items():
        visit(k, v)
    return out


def test_shipped_schemas_are_the_current_ones() -> None:
    air = json.loads((SCHEMAS / "AirQualityObserved.schema.json").read_text())
    assert air["$schemaVersion"] == "0.1.4" and "pressure" in json.dumps(air)
    tfo = json.loads((SCHEMAS / "TrafficFlowObserved.schema.json").read_text())
    assert tfo["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert tfo["$id"] == "https://smart-data-models.github.io/dataModel.Transportation/TrafficFlowObserved/schema.json"
    for t in ("AirQualityObserved", "TrafficFlowObserved", "Device"):
        assert type(validator(t)).__name__ == "Draft202012Validator"  # the draft each declares


@pytest.fixture(scope="module")
def devices(loaded) -> dict[str, Device]:  # type: ignore[no-untyped-def]
    return Registry(loaded.registry).load()


@pytest.fixture(scope="module")
def entities(loaded, devices: dict[str, Device]) -> dict[str, list[dict]]:  # type: ignore[no-untyped-def]
    return ngsi_ld.build(loaded.client, LocalRange(DAY, DAY, an_sim.TZ), devices)


@pytest.mark.services  # the real influxd
class TestExport:

    def test_one_entity_per_device_with_device_entities(self, entities: dict[str, list[dict]]) -> None:
        assert sorted(entities) == ["AirQualityObserved", "AirQualityObserved.temporal", "Device",
                                    "TrafficFlowObserved", "TrafficFlowObserved.temporal"]
        air = entities["AirQualityObserved"]
        assert sorted(e["id"] for e in air) == [f"urn:ngsi-ld:AirQualityObserved:kerbside:{d}" for d in sorted(an_sim.AIR)]
        assert len(entities["TrafficFlowObserved"]) == 2 * 2  # devices x lane directions
        device_ids = {e["id"] for e in entities["Device"]}
        assert len(device_ids) == 6
        refs = {e["refDevice"]["object"] for k in ("AirQualityObserved", "TrafficFlowObserved") for e in entities[k]}
        assert refs == device_ids  # every refDevice resolves to an exported Device
        dev = next(e for e in entities["Device"] if e["id"].endswith("a1000001"))
        assert dev["controlledProperty"]["value"] == ["airPollution", "temperature", "humidity", "atmosphericPressure"]
        assert dev["dateLastValueReported"]["value"]["@value"] == "2026-04-01T21:00:00Z"  # last hour of the local day

    def test_everything_validates_and_has_observed_at(self, entities: dict[str, list[dict]]) -> None:
        for kind, group in entities.items():
            for e in group:
                if not kind.endswith(".temporal"):
                    assert errors(e) == [], e["id"]
                props = _walk(e)
                assert props and all("observedAt" in p for _, p in props), kind
        for name, p in _walk(entities["AirQualityObserved"][0]):
            if name in ("no2", "pm25", "pm10", "pm1", "temperature", "relativeHumidity", "pressure"):
                assert p["unitCode"] in ("GQ", "CEL", "C62", "A97"), name

    def test_temporal_history_holds_every_hour(self, entities: dict[str, list[dict]], sim: an_sim.Sim) -> None:
        t = next(e for e in entities["AirQualityObserved.temporal"] if e["id"].endswith("a1000002"))
        assert len(t["no2"]) == 24 and len({i["observedAt"] for i in t["no2"]}) == 24
        at8 = next(i for i in t["no2"] if i["observedAt"] == "2026-04-01T06:00:00Z")  # 08:00 local (CEST)
        assert at8 == {"type": "Property", "value": 250.0, "observedAt": "2026-04-01T06:00:00Z", "unitCode": "GQ"}
        m = sim.minutes
        raw = m[(m["device"] == "a1000002") & (m["time"].dt.floor("h") == "2026-04-01T06:00:00Z")]
        pm25 = next(i for i in t["pm25"] if i["observedAt"] == "2026-04-01T06:00:00Z")
        assert pm25["value"] == pytest.approx(raw["pm25"].mean(), abs=1e-4)
        p = next(i for i in t["pressure"] if i["observedAt"] == "2026-04-01T06:00:00Z")
        assert p["value"] == pytest.approx(raw["pressure"].mean(), abs=1e-4) and p["unitCode"] == "A97"
        assert t["location"]["value"] == {"type": "Point", "coordinates": [4.3570, 50.8450]}
        tf = next(e for e in entities["TrafficFlowObserved.temporal"] if e["id"].endswith("b1000001:in"))
        hour = [i for i in tf["intensity"] if i["observedAt"] == "2026-04-01T06:00:00Z"]
        lorry = next(i for i in hour if i.get("datasetId") == "urn:ngsi-ld:Dataset:kerbside:lorry")
        tr = sim.traffic
        raw_t = tr[(tr["device"] == "b1000001") & (tr["direction"] == "in") & (tr["cls"] == "heavy")
                   & (tr["time"].dt.floor("h") == "2026-04-01T06:00:00Z")]
        assert lorry["value"] == int(raw_t["count"].sum()) and lorry["vehicleType"]["value"] == "lorry"
        total = next(i for i in hour if "datasetId" not in i)
        assert total["value"] == sum(i["value"] for i in hour if "datasetId" in i)
        assert tf["laneDirection"]["value"] == "forward"

    def test_negative_no2_is_exported_as_zero_and_kept(self, entities: dict[str, list[dict]],
                                                        devices: dict[str, Device]) -> None:
        row = {"time": pd.Timestamp("2026-04-01T06:00Z"), "capture": 1.0, "no2": -1.37, "pm25": 4.0}
        e = ngsi_ld.air_snapshot(row, devices["a1000003"])
        assert e["no2"]["value"] == 0.0 and e["no2"]["measuredValue"]["value"] == -1.37
        assert errors(e) == [] and key_values(e)["no2"] == 0.0

    def test_reliability_reflects_capture(self, loaded, devices: dict[str, Device]) -> None:  # type: ignore[no-untyped-def]
        d, h = an_sim.INJECTED["zero_capture_half_hour"]
        ents = ngsi_ld.build(loaded.client, LocalRange(d, d, an_sim.TZ), devices)["AirQualityObserved.temporal"]
        at = an_sim.local(d, h).strftime("%Y-%m-%dT%H:%M:%SZ")
        e = next(x for x in ents if x["id"].endswith("a1000001"))
        assert next(i for i in e["reliability"] if i["observedAt"] == at)["value"] == pytest.approx(0.5)

    def test_schema_rejects_bad_entities(self, entities: dict[str, list[dict]]) -> None:
        bad = json.loads(json.dumps(entities["AirQualityObserved"][0]))
        bad["no2"]["value"] = -3.0
        bad["reliability"]["value"] = 1.2
        del bad["location"]
        msgs = errors(bad)
        assert len(msgs) == 3 and any("location" in m for m in msgs)
        t = json.loads(json.dumps(entities["TrafficFlowObserved"][0]))
        t["laneDirection"]["value"] = "sideways"
        assert errors(t) and "sideways" in errors(t)[0]
        d = json.loads(json.dumps(entities["Device"][0]))
        d["controlledProperty"]["value"] = ["gossip"]
        assert errors(d) and "gossip" in errors(d)[0]

    def test_current_only(self, loaded, devices: dict[str, Device]) -> None:  # type: ignore[no-untyped-def]
        ents = ngsi_ld.build(loaded.client, loaded.rng, devices, current=True)
        assert sorted(ents) == ["AirQualityObserved", "Device", "TrafficFlowObserved"]
        assert {e["dateObserved"]["value"]["@value"] for e in ents["AirQualityObserved"]} == {"2026-04-12T21:00:00Z"}

    def test_files_and_post_to_loopback_broker(self, entities: dict[str, list[dict]], tmp_path: Path) -> None:
        paths = ngsi_ld.write_files(entities, tmp_path)
        assert sorted(p.name for p in paths) == sorted(f"{k}.jsonld" for k in entities)
        assert json.loads((tmp_path / "AirQualityObserved.jsonld").read_text()) == entities["AirQualityObserved"]
        with Broker() as broker:
            n = ngsi_ld.post(entities, broker.url, batch=5)
        upserted = sum(len(entities[k]) for k in ("Device", "AirQualityObserved", "TrafficFlowObserved"))
        history = len(entities["AirQualityObserved.temporal"]) + len(entities["TrafficFlowObserved.temporal"])
        assert n == upserted + history
        assert sum(len(b) for b in broker.batches) == upserted and len(broker.batches) == -(-upserted // 5)
        assert len(broker.temporal) == history and broker.temporal[0]["id"].startswith("urn:ngsi-ld:AirQualityObserved")
        assert set(broker.content_types) == {"application/ld+json"}

    def test_broker_errors_are_clear(self, entities: dict[str, list[dict]]) -> None:
        with Broker(status=207) as broker, pytest.raises(ngsi_ld.ExportError, match=r"HTTP 207 .*\(0 entities sent"):
            ngsi_ld.post(entities, broker.url)
        with Broker() as broker:
            url = broker.url
        with pytest.raises(ngsi_ld.ExportError, match="cannot reach the NGSI-LD broker"):
            ngsi_ld.post(entities, url)

    def test_missing_location_and_no_data(self, loaded, devices: dict[str, Device]) -> None:  # type: ignore[no-untyped-def]
        no_loc = dict(devices)
        no_loc["a1000001"] = Device("a1000001", "air", "lez-market", "lez")
        with pytest.raises(ngsi_ld.ExportError, match="a1000001 has no lat/lon"):
            ngsi_ld.build(loaded.client, LocalRange(DAY, DAY, an_sim.TZ), no_loc)
        with pytest.raises(ngsi_ld.ExportError, match="nothing to export"):
            ngsi_ld.build(loaded.client, LocalRange(date(2025, 1, 1), date(2025, 1, 1), an_sim.TZ), devices)
