"""NGSI-LD export: one entity per device, its Device entity, and its history in the temporal representation.

What is written (docs/analysts.md, section 10):

* `Device.jsonld`: one Device entity per exported node (urn:ngsi-ld:Device:kerbside:<id>), so every
  `refDevice` resolves; location, what it measures (controlledProperty), when it last reported, when
  it was last calibrated.
* `AirQualityObserved.jsonld`: one entity per air node (urn:ngsi-ld:AirQualityObserved:kerbside:<id>)
  holding its latest hourly means: the live state a broker keeps (entityOperations/upsert).
* `TrafficFlowObserved.jsonld`: one entity per traffic node and lane direction
  (urn:ngsi-ld:TrafficFlowObserved:kerbside:<id>:<in|out>; the data model describes one lane
  direction per observation), `intensity` = all vehicles, plus one instance per vehicle class
  (`datasetId` urn:ngsi-ld:Dataset:kerbside:<vehicleType>, with a `vehicleType` sub-property).
* `*.temporal.jsonld`: the same entities in the NGSI-LD temporal representation: each measured
  property is an array of instances, one per hour, for POST /ngsi-ld/v1/temporal/entities/.

Every Property, GeoProperty and Relationship carries `observedAt` (the START of its averaging hour,
as stored in InfluxDB; `dateObservedFrom`/`dateObservedTo` spell the hour out) and every quantity its
`unitCode` (UN/CEFACT common codes). `reliability` is the hourly data capture (0..1).

Negative values: electrochemical NO2 cells read slightly below zero in clean air, and the wire
contract keeps such readings on purpose (clamping would bias means upwards). AirQualityObserved
declares `minimum: 0` for concentrations, so the export, and only the export, sends 0 as the value
and keeps what the sensor measured in a `measuredValue` sub-property: the entity validates, nothing
is lost, and a consumer can tell. A batch never fails for it.

Every hourly snapshot of every entity is converted to key-values and validated against the shipped
Smart Data Models schemas (analysis.ngsi_ld_schema) before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from kerbside.analysis import calibration, query
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
    "Device": ["https://raw.githubusercontent.com/smart-data-models/dataModel.Device/master/context.jsonld", CORE_CONTEXT],
}
# UN/CEFACT Common Codes, as NGSI-LD unitCode expects: GQ µg/m³, 59 ppm, CEL °C, C62 one (a 0..1 ratio), A97 hPa.
AIR_PROPS = {  # influx field -> (entity property, unitCode, scale, never negative in the data model)
    "pm1": ("pm1", "GQ", 1.0, False), "pm25": ("pm25", "GQ", 1.0, True), "pm10": ("pm10", "GQ", 1.0, True),
    "no2": ("no2", "GQ", 1.0, True), "co2": ("co2", "59", 1.0, True), "temp": ("temperature", "CEL", 1.0, False),
    "rh": ("relativeHumidity", "C62", 0.01, True), "pressure": ("pressure", "A97", 1.0, True),
}
LANE = {"in": "forward", "out": "backward"}
VEHICLE_TYPE = {"motorcycle": "motorcycle", "car": "car", "van": "van", "heavy": "lorry"}
MEASURED = {"dateObserved", "dateObservedFrom", "dateObservedTo", "reliability", "intensity", "averageVehicleSpeed",
            *(v[0] for v in AIR_PROPS.values())}
"""Properties that change every hour: arrays of instances in the temporal representation."""
TYPES = ("Device", "AirQualityObserved", "TrafficFlowObserved")


class ExportError(AnalysisError, RuntimeError):
    pass


def _iso(t: pd.Timestamp | datetime) -> str:
    return pd.Timestamp(t).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _prop(value: Any, at: str, unit: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"type": "Property", "value": value, "observedAt": at}
    if unit:
        p["unitCode"] = unit
    return p


def _dt(t: pd.Timestamp | datetime, at: str) -> dict[str, Any]:
    return {"type": "Property", "value": {"@type": "DateTime", "@value": _iso(t)}, "observedAt": at}


def _located(device: str, registry: dict[str, Device]) -> Device:
    d = registry.get(device)
    if d is None or d.lat is None or d.lon is None:
        raise ExportError(f"device {device} has no lat/lon in the registry; NGSI-LD entities need a location. "
                          "Set it with provisioning (registry) and export again")
    return d


def _location(device: Device, at: str) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [device.lon, device.lat]}, "observedAt": at}


def _base(kind: str, device: Device, suffix: str, start: pd.Timestamp) -> dict[str, Any]:
    at = _iso(start)
    return {
        "id": f"urn:ngsi-ld:{kind}:kerbside:{device.id}{suffix}",
        "type": kind,
        "dateObserved": _dt(start, at),
        "dateObservedFrom": _dt(start, at),
        "dateObservedTo": _dt(start + timedelta(hours=1), at),
        "location": _location(device, at),
        "areaServed": _prop(device.zone or "unzoned", at),
        "name": _prop(device.site, at),
        "refDevice": {"type": "Relationship", "object": f"urn:ngsi-ld:Device:kerbside:{device.id}", "observedAt": at},
        "@context": CONTEXTS[kind],
    }


def air_snapshot(r: dict[str, Any], dev: Device) -> dict[str, Any]:
    """One device's hour as a normalized AirQualityObserved entity."""
    e = _base("AirQualityObserved", dev, "", r["time"])
    at = e["dateObserved"]["observedAt"]
    e["typeofLocation"] = _prop("outdoor", at)
    e["reliability"] = _prop(round(min(1.0, max(0.0, float(r["capture"]))), 4), at)
    for field, (name, unit, scale, non_negative) in AIR_PROPS.items():
        v = r.get(field)
        if v is None or pd.isna(v):
            continue
        value = round(float(v) * scale, 4)
        if non_negative and value < 0:
            p = _prop(0.0, at, unit)
            p["measuredValue"] = _prop(value, at, unit)  # what the sensor read; see the module docstring
        else:
            p = _prop(value, at, unit)
        e[name] = p
    return e


def traffic_snapshot(flow: dict[str, Any], classes: dict[str, int], dev: Device) -> dict[str, Any]:
    """One device-direction's hour: all vehicles, and one `intensity` instance per vehicle class."""
    e = _base("TrafficFlowObserved", dev, f":{flow['direction']}", flow["time"])
    at = e["dateObserved"]["observedAt"]
    e["laneDirection"] = _prop(LANE.get(flow["direction"], "forward"), at)
    instances = [_prop(int(flow["vehicles"]), at)]
    for cls, n in sorted(classes.items()):
        vt = VEHICLE_TYPE.get(cls, "car")
        inst = _prop(int(n), at)
        inst["datasetId"] = f"urn:ngsi-ld:Dataset:kerbside:{vt}"
        inst["vehicleType"] = _prop(vt, at)
        instances.append(inst)
    e["intensity"] = instances if len(instances) > 1 else instances[0]
    if flow.get("speed") is not None and not pd.isna(flow["speed"]):
        e["averageVehicleSpeed"] = _prop(round(float(flow["speed"]), 2), at, "KMH")
    return e


def device_entity(dev: Device, last: pd.Timestamp, cal: list[calibration.Coefficients]) -> dict[str, Any]:
    at = _iso(last)
    measures = ["airPollution", "temperature", "humidity", "atmosphericPressure"] if dev.kit == "air" else ["trafficFlow"]
    e: dict[str, Any] = {
        "id": f"urn:ngsi-ld:Device:kerbside:{dev.id}", "type": "Device",
        "category": _prop(["sensor"], at), "controlledProperty": _prop(measures, at),
        "serialNumber": _prop(dev.id, at), "name": _prop(dev.site, at), "location": _location(dev, at),
        "supportedProtocol": _prop(["mqtt"], at), "deviceState": _prop(dev.status, at),
        "dateLastValueReported": _dt(last, at), "@context": CONTEXTS["Device"],
    }
    if cal:
        e["dateLastCalibration"] = _dt(pd.Timestamp(max(c.fitted for c in cal)), at)
    return e


def temporal(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Snapshots of one entity (oldest first) in the NGSI-LD temporal representation."""
    last = snapshots[-1]
    out: dict[str, Any] = {k: v for k, v in last.items() if k not in MEASURED}
    for name in MEASURED:
        inst: list[dict[str, Any]] = []
        for s in snapshots:
            v = s.get(name)
            if v is None:
                continue
            inst.extend(v if isinstance(v, list) else [v])
        if inst:
            out[name] = inst
    return out


def _traffic_frames(client: Influx, rng: LocalRange) -> tuple[pd.DataFrame, pd.DataFrame]:
    flow = client.frame(f"SELECT * FROM {quote_ident(AGG_RP)}.{quote_ident('traffic_flow_1h')} WHERE {rng.where()}")
    counts = client.frame(f"SELECT * FROM {quote_ident(AGG_RP)}.{quote_ident('traffic_1h')} WHERE {rng.where()}")
    return flow, counts


def build(client: Influx, rng: LocalRange, registry: dict[str, Device], period_s: int = 60,
          current: bool = False, calibrations: calibration.Calibrations | None = None) -> dict[str, list[dict[str, Any]]]:
    """Device, current and temporal entities of the range, every snapshot validated; raises ExportError listing
    schema violations. `current`: the latest state only (no temporal files)."""
    calibrations = calibrations or {}
    try:
        hours = query.hourly(client, rng, period_s, calibrations=calibrations)
    except query.NoDataError:
        hours = pd.DataFrame()
    flow, counts = _traffic_frames(client, rng)
    if hours.empty and flow.empty and counts.empty:
        raise ExportError(f"nothing to export between {rng.first} and {rng.last}: no hourly aggregates "
                          "(run `kerbside db backfill` if raw readings exist)")
    snaps: dict[str, list[list[dict[str, Any]]]] = {"AirQualityObserved": [], "TrafficFlowObserved": []}
    last_seen: dict[str, pd.Timestamp] = {}
    if not hours.empty:
        for device, g in hours.sort_values("time").groupby("device"):
            dev = _located(str(device), registry)
            snaps["AirQualityObserved"].append([air_snapshot(r, dev) for r in g.to_dict("records")])
            last_seen[dev.id] = g["time"].max()
    if not flow.empty:
        per_class: dict[tuple[str, str, pd.Timestamp], dict[str, int]] = {}
        for r in counts.dropna(subset=["count"]).to_dict("records") if not counts.empty else []:
            per_class.setdefault((r["device"], r["direction"], r["time"]), {})[r["class"]] = int(r["count"])
        for (device, _direction), g in flow.sort_values("time").groupby(["device", "direction"]):
            dev = _located(str(device), registry)
            snaps["TrafficFlowObserved"].append([
                traffic_snapshot(r, per_class.get((r["device"], r["direction"], r["time"]), {}), dev)
                for r in g.dropna(subset=["vehicles"]).to_dict("records")])
            last_seen[dev.id] = max(last_seen.get(dev.id, g["time"].max()), g["time"].max())
    bad = [msg for group in snaps.values() for series in group for e in (series[-1:] if current else series)
           for msg in errors(e)]
    devices = [device_entity(registry[d], t, calibrations.get(d, [])) for d, t in sorted(last_seen.items())]
    bad += [msg for e in devices for msg in errors(e)]
    if bad:
        raise ExportError(f"{len(bad)} schema violations, nothing written; first: " + "; ".join(bad[:5]))
    out: dict[str, list[dict[str, Any]]] = {"Device": devices}
    for kind, group in snaps.items():
        out[kind] = [series[-1] for series in group if series]
        if not current:
            out[f"{kind}.temporal"] = [temporal(series) for series in group if series]
    return out


def write_files(ents: dict[str, list[dict[str, Any]]], out: Path) -> list[Path]:
    """One JSON-LD file (an array of entities) per group: <Type>.jsonld for upsert, <Type>.temporal.jsonld for history."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, group in ents.items():
        p = out / f"{kind}.jsonld"
        p.write_text(json.dumps(group, indent=1, ensure_ascii=False))
        paths.append(p)
    return paths


def post(ents: dict[str, list[dict[str, Any]]], broker: str, batch: int = 100,
         progress: Callable[[int, int], None] | None = None) -> int:
    """Upsert the Device and current entities (POST /ngsi-ld/v1/entityOperations/upsert, in batches), then add each
    temporal entity's history (POST /ngsi-ld/v1/temporal/entities/); returns the requests' entity count."""
    flat = [e for kind, group in ents.items() if not kind.endswith(".temporal") for e in group]
    history = [e for kind, group in ents.items() if kind.endswith(".temporal") for e in group]
    base = broker.rstrip("/") + "/ngsi-ld/v1"
    requests = [(f"{base}/entityOperations/upsert", flat[i:i + batch]) for i in range(0, len(flat), batch)]
    requests += [(f"{base}/temporal/entities/", e) for e in history]
    sent = 0
    total = len(flat) + len(history)
    with httpx.Client(timeout=60) as http:
        for n, (url, body) in enumerate(requests, start=1):
            try:
                r = http.post(url, content=json.dumps(body).encode(), headers={"Content-Type": "application/ld+json"})
            except httpx.HTTPError as e:
                raise ExportError(f"cannot reach the NGSI-LD broker at {broker} ({e}); the files are written, "
                                  "retry with --broker when it is up") from e
            if r.status_code not in (200, 201, 204):
                raise ExportError(f"broker refused request {n} ({url.removeprefix(base)}): HTTP {r.status_code} "
                                  f"{r.text[:300]} ({sent} entities sent before it)")
            sent += len(body) if isinstance(body, list) else 1
            if progress:
                progress(sent, total)
    return sent
