"""The collector side of the wire contract: every vector decodes exactly as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kerbside.collector.decode import Rejected, decode
from kerbside.core import contract

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "docs" / "wire" / "vectors.json").read_text())


def test_vector_set_covers_the_contract(vectors: list[dict]) -> None:
    invalid = [v for v in vectors if not v["valid"]]
    assert len(vectors) >= 30 and len(invalid) >= 15
    names = [v["name"] for v in vectors]
    assert len(names) == len(set(names)), "vector names must be unique"
    # every reason the decoder can give (all but registry/InfluxDB ones) has a vector
    decoder_reasons = set(contract.REASONS) - {"unknown_device", "decommissioned", "influx_rejected"}
    assert decoder_reasons == {v["reason"] for v in invalid}
    # every channel of both kits is carried by some valid vector
    text = "\n".join(line for v in vectors if v["valid"] for line in v["lines"])
    for ch in contract.AIR_CHANNELS:
        assert f"{ch.name}=" in text
    for cls in contract.TRAFFIC_CLASSES:
        assert f"class={cls}" in text
    assert "air_unsynced" in text and "traffic_flow_unsynced" in text


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(v: dict) -> None:
    payload = bytes.fromhex(v["payload_hex"])
    if v["valid"]:
        assert decode(v["topic"], payload, v["now"]).lines == v["lines"], v["name"]
    else:
        with pytest.raises(Rejected) as e:
            decode(v["topic"], payload, v["now"])
        assert e.value.reason == v["reason"], (v["name"], str(e.value))


def test_registry_tags_are_added_sorted_and_escaped(vectors: list[dict]) -> None:
    v = next(x for x in vectors if x["name"] == "air_single_6ch")
    d = decode(v["topic"], bytes.fromhex(v["payload_hex"]), v["now"], {"site": "Rue de la Loi 16", "zone": "lez"})
    assert d.lines[0].startswith(r"air,device=00c0ffee,site=Rue\ de\ la\ Loi\ 16,zone=lez boot=3i,")


def test_decoded_sequence_metadata(vectors: list[dict]) -> None:
    v = next(x for x in vectors if x["name"] == "air_batch_60")
    d = decode(v["topic"], bytes.fromhex(v["payload_hex"]), v["now"])
    assert (d.device, d.kind, d.seq, d.count, d.boot, d.synced, d.period) == ("00c0ffee", "readings", 1000, 60, 3, True, 60)
    assert len(d.lines) == 60


def test_sizes_in_the_doc_are_measured(vectors: list[dict]) -> None:
    """docs/wire/README.md states payload sizes; they must be the vectors' real sizes."""
    doc = (ROOT / "docs" / "wire" / "README.md").read_text().split("## Measured sizes")[1]
    sizes = {v["name"]: len(bytes.fromhex(v["payload_hex"])) for v in vectors if v["valid"]}
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \|", doc, re.M)
    assert len(rows) >= 5
    for name, size in rows:
        assert sizes[name] == int(size), f"doc says {name} is {size} B, vector is {sizes[name]} B"
    assert sizes["air_single_6ch"] <= 40
    assert sizes["air_batch_60"] / 60 <= 16
