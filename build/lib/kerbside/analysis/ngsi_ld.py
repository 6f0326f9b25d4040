"""NGSI-LD export: hourly (and latest) AirQualityObserved and TrafficFlowObserved entities.

Entities are NGSI-LD *normalized* (Property/GeoProperty with unitCode), because
only that form carries units; validation converts them to key-values, the form
the Smart Data Models schemas describe (analysis.ngsi_ld_schema).

Ids: hourly entities are one entity per device and hour,
urn:ngsi-ld:AirQualityObserved:kerbside:<device>:<UTC hour start, YYYYMMDDTHHZ>;
"current" entities drop the hour so a broker keeps one, updated, entity per
device. dateObserved is the START of the averaging hour (as stored in InfluxDB),
with dateObservedFrom/To spelling the hour out. reliability is the hourly data
capture (0..1), so a consumer can apply the 75 % rule itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from kerbside.analysis import query
from kerbside.analysis.influx import Influx
from kerbside.analysis.ngsi_ld_schema import errors
from kerbside.analysis.schema import AGG_RP
from kerbside.analysis.timerange import LocalRange
from kerbside.core.errors import AnalysisError
from kerbside.core.influx import quote_ident
from kerbside.core.registry import Device

CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
CONTEXTS = {
    "AirQualityObserved": [
        "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld", CORE_CONTEXT],
    "TrafficFlowObserved": [
        "https://raw.githubusercontent.com/smart-data-models/dataModel.Transportation/master/context.jsonld", CORE_CONTEXT],
}
# UN/CEFACT Common Codes, as NGSI-LD unitCode expects.
AIR_PROPS = {  # influx field -> (entity property, unitCode, scale)
    "pm1": ("pm1", "GQ", 1.0), "pm25": ("pm25", "GQ", 1.0), "pm10": ("pm10", "GQ", 1.0), "no2": ("no2", "GQ", 1.0),
    "co2": ("co2", "59", 1.0), "temp": ("temperature", "CEL", 1.0), "rh": ("relativeHumidity", "C62", 0.01),
}
LANE = {"in": "forward", "out": "backward"}
VEHICLE_TYPE = {"motorcycle": "motorcycle", "car": "car", "van": "van", "heavy": "lorry"}


class ExportError(AnalysisError, RuntimeError):
    pass


def _iso(t: pd.Timestamp | datetime) -> str:
    return pd.Timestamp(t).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _prop(value: Any, unit: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"type": "Property", "value": value}
    if unit:
        p["unitCode"] = unit
    return p


def _dt(t: pd.Timestamp | datetime) -> dict[str, Any]:
    return {"type": "Property", "value": {"@type": "DateTime", "@value": _iso(t)}}


def _located(device: str, registry: dict[str, Device]) -> Device:
    d = registry.get(device)
    if d is None or d.lat is None or d.lon is None:
        raise ExportError(f"device {device} has no lat/lon in the registry; NGSI-LD entities need a location. "
                          "Set it with provisioning (registry) and export again")
    return d


def _base(kind: str, device: Device, suffix: str, start: pd.Timestamp) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:{kind}:kerbside:{device.id}{suffix}",
        "type": kind,
        "dateObserved": _dt(start),
        "dateObservedFrom": _dt(start),
        "dateObservedTo": _dt(start + timedelta(hours=1)),
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [device.lon, device.lat]}},
        "areaServed": _prop(device.zone or "unzoned"),
        "name": _prop(device.site),
        "refDevice": {"type": "Relationship", "object": f"urn:ngsi-ld:Device:kerbside:{device.id}"},
        "@context": CONTEXTS[kind],
    }


def _suffix(t: pd.Timestamp, current: bool) -> str:
    return "" if current else ":" + t.tz_convert("UTC").strftime("%Y%m%dT%HZ")


def _latest(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return df.sort_values("time").groupby(keys, dropna=False).tail(1)


def air_entities(hours: pd.DataFrame, registry: dict[str, Device], current: bool = False) -> list[dict[str, Any]]:
    rows = _latest(hours, ["device"]) if current else hours
    out = []
    for r in rows.to_dict("records"):
        dev = _located(r["device"], registry)
        e = _base("AirQualityObserved", dev, _suffix(r["time"], current), r["time"])
        e["typeofLocation"] = _prop("outdoor")
        e["reliability"] = _prop(round(float(r["capture"]), 4))
        for field, (name, unit, scale) in AIR_PROPS.items():
            v = r.get(field)
            if v is not None and not pd.isna(v):
                e[name] = _prop(round(float(v) * scale, 4), unit)
        out.append(e)
    return out


def _traffic_frames(client: Influx, rng: LocalRange) -> tuple[pd.DataFrame, pd.DataFrame]:
    flow = client.frame(f"SELECT * FROM {quote_ident(AGG_RP)}.{quote_ident('traffic_flow_1h')} WHERE {rng.where()}")
    counts = client.frame(f"SELECT * FROM {quote_ident(AGG_RP)}.{quote_ident('traffic_1h')} WHERE {rng.where()}")
    return flow, counts


def traffic_entities(flow: pd.DataFrame, counts: pd.DataFrame, registry: dict[str, Device],
                     current: bool = False) -> list[dict[str, Any]]:
    """One entity per device, hour and direction (all vehicles), plus one per vehicle class."""
    out = []
    if not flow.empty:
        rows = _latest(flow, ["device", "direction"]) if current else flow
        for r in rows.to_dict("records"):
            dev = _located(r["device"], registry)
            e = _base("TrafficFlowObserved", dev, f":{r['direction']}{_suffix(r['time'], current)}", r["time"])
            e["laneDirection"] = _prop(LANE.get(r["direction"], "forward"))
            e["intensity"] = _prop(int(r["vehicles"]))
            if r.get("speed") is not None and not pd.isna(r["speed"]):
                e["averageVehicleSpeed"] = _prop(round(float(r["speed"]), 2), "KMH")
            out.append(e)
    if not counts.empty:
        rows = _latest(counts, ["device", "direction", "class"]) if current else counts
        for r in rows.to_dict("records"):
            dev = _located(r["device"], registry)
            e = _base("TrafficFlowObserved", dev, f":{r['direction']}:{r['class']}{_suffix(r['time'], current)}",
                      r["time"])
            e["laneDirection"] = _prop(LANE.get(r["direction"], "forward"))
            e["vehicleType"] = _prop(VEHICLE_TYPE.get(r["class"], "car"))
            e["intensity"] = _prop(int(r["count"]))
            out.append(e)
    return out


def build(client: Influx, rng: LocalRange, registry: dict[str, Device], period_s: int = 60,
          current: bool = False) -> dict[str, list[dict[str, Any]]]:
    """All entities of the range, validated; raises ExportError listing schema violations."""
    try:
        hours = query.hourly(client, rng, period_s)
    except query.NoDataError:
        hours = pd.DataFrame()
    flow, counts = _traffic_frames(client, rng)
    if hours.empty and flow.empty and counts.empty:
        raise ExportError(f"nothing to export between {rng.first} and {rng.last}: no hourly aggregates "
                          "(run `kerbside db backfill` if raw readings exist)")
    ents = {"AirQualityObserved": air_entities(hours, registry, current) if not hours.empty else [],
            "TrafficFlowObserved": traffic_entities(flow, counts, registry, current)}
    bad = [msg for group in ents.values() for e in group for msg in errors(e)]
    if bad:
        raise ExportError(f"{len(bad)} schema violations, first: " + "; ".join(bad[:5]))
    return ents


def write_files(ents: dict[str, list[dict[str, Any]]], out: Path) -> list[Path]:
    """One JSON-LD file (an array of entities, ready for entityOperations/upsert) per entity type."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, group in ents.items():
        p = out / f"{kind}.jsonld"
        p.write_text(json.dumps(group, indent=1, ensure_ascii=False))
        paths.append(p)
    return paths


def post(ents: dict[str, list[dict[str, Any]]], broker: str, batch: int = 100,
         progress: Callable[[int, int], None] | None = None) -> int:
    """Upsert all entities into an NGSI-LD broker (POST /ngsi-ld/v1/entityOperations/upsert); returns the count."""
    flat = [e for group in ents.values() for e in group]
    url = broker.rstrip("/") + "/ngsi-ld/v1/entityOperations/upsert"
    sent = 0
    with httpx.Client(timeout=60) as http:
        for i in range(0, len(flat), batch):
            chunk = flat[i:i + batch]
            try:
                r = http.post(url, content=json.dumps(chunk).encode(), headers={"Content-Type": "application/ld+json"})
            except httpx.HTTPError as e:
                raise ExportError(f"cannot reach the NGSI-LD broker at {broker} ({e}); the files are written, "
                                  "retry with --broker when it is up") from e
            if r.status_code not in (200, 201, 204):
                raise ExportError(f"broker refused batch {i // batch + 1}: HTTP {r.status_code} {r.text[:300]} "
                                  f"({sent} entities sent before it)")
            sent += len(chunk)
            if progress:
                progress(sent, len(flat))
    return sent
