"""Validate entities against the shipped Smart Data Models JSON Schemas, offline.

The schemas $ref remote common definitions; a registry maps those URLs to the
files under analysis/schemas/ so validation never touches the network and
gives the same answer on an air-gapped city server (see schemas/LICENSE.md).
Each schema is validated with the JSON Schema draft it declares in `$schema`
(all current Smart Data Models schemas declare draft 2020-12).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import FormatChecker, validators
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

SCHEMAS = Path(__file__).with_name("schemas")
COMMON = "https://smart-data-models.github.io/data-models/common-schema.json"
LOCAL = {COMMON: "common-schema.json",
         "https://smart-data-models.github.io/dataModel.Device/device-schema.json": "device-schema.json"}
TYPES = ("AirQualityObserved", "TrafficFlowObserved", "Device")


def _load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text())


def _retrieve(uri: str) -> Resource:
    if uri not in LOCAL:
        raise NoSuchResource(ref=uri)  # type: ignore[call-arg]
    return Resource.from_contents(_load(LOCAL[uri]), default_specification=DRAFT202012)


def _rfc3339(value: object) -> bool:
    """date-time check without an extra dependency: ISO 8601 with a date, a time and an offset."""
    if not isinstance(value, str):
        return True
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return "T" in value.upper() and parsed.tzinfo is not None


FORMATS = FormatChecker()
FORMATS.checks("date-time", raises=ValueError)(_rfc3339)


@cache
def validator(entity_type: str) -> Validator:
    """The validator of the draft the schema declares (validators.validator_for reads its `$schema`)."""
    if entity_type not in TYPES:
        raise ValueError(f"no shipped schema for {entity_type!r}; have {', '.join(TYPES)}")
    schema = _load(f"{entity_type}.schema.json")
    cls = validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=Registry(retrieve=_retrieve), format_checker=FORMATS)  # type: ignore[call-arg]


def _default_instance(v: Any) -> Any:
    """A multi-instance attribute (a list of instances with datasetIds): its default instance, else its first."""
    if isinstance(v, list) and v and all(isinstance(x, dict) and "type" in x for x in v):
        return next((x for x in v if "datasetId" not in x), v[0])
    return v


def key_values(entity: dict[str, Any]) -> dict[str, Any]:
    """The NGSI-LD normalized entity in key-value form, which is what Smart Data Models schemas describe.

    Sub-properties (observedAt, unitCode, measuredValue, vehicleType of a dataset instance) have no key-value
    form and are dropped; a multi-instance attribute becomes its default instance's value."""
    out: dict[str, Any] = {}
    for k, v in entity.items():
        if k == "@context":
            continue
        v = _default_instance(v)
        if isinstance(v, dict) and v.get("type") in ("Property", "GeoProperty"):
            val = v["value"]
            out[k] = val["@value"] if isinstance(val, dict) and "@value" in val else val
        elif isinstance(v, dict) and v.get("type") == "Relationship":
            out[k] = v["object"]
        else:
            out[k] = v
    return out


def errors(entity: dict[str, Any]) -> list[str]:
    """Schema violations of one normalized entity, as readable strings (empty = valid)."""
    v = validator(entity.get("type", ""))
    try:
        return [f"{entity.get('id')}: {'/'.join(map(str, e.absolute_path)) or '(entity)'}: {e.message}"
                for e in v.iter_errors(key_values(entity))]
    except Unresolvable as e:
        return [f"{entity.get('id')}: cannot validate, the schema refers to {e} which kerbside does not ship"]
