"""The wire contract's tables are said once in code (knode.wire, kerbside.core.contract); these tests fail when the
code, the prose (docs/wire/README.md), the grammar (kerbside.cddl), the vectors or the analysts' lists drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kerbside.analysis import limits, ngsi_ld, query, report, schema
from kerbside.core import contract
from kerbside.core.registry import Device
from knode import config as node_config
from knode import wire

WIRE_DOCS = Path(__file__).resolve().parents[2] / "docs" / "wire"
README = (WIRE_DOCS / "README.md").read_text()
CDDL = (WIRE_DOCS / "kerbside.cddl").read_text()


def _section(title: str) -> str:
    return README.split(title, 1)[1].split("\n#", 1)[0]


def _int(text: str) -> int:
    return int(text.replace("−", "-").replace(" ", ""))


def _readme_channels(title: str) -> list[tuple[str, int, str, int, int]]:
    """(channel, scale, unit, lo, hi) per channel of a kit's table, in wire order."""
    rows = re.findall(r"^\| (\d+(?:–\d+)?) \| (.+?) \| (.+?) \| (.+?) \| (\S+) … (\S+) \| (.+?) \|$",
                      _section(title), re.M)
    assert rows, f"no channel table under {title!r}"
    out, pos = [], 1
    for where, _, unit, wire_int, lo, hi, names in rows:
        first, _, last = where.partition("–")
        assert int(first) == pos, f"{title}: row {where} does not follow position {pos - 1}"
        scale = 1 if wire_int == "count" else int(re.fullmatch(r"value × (\d+)", wire_int).group(1))  # type: ignore[union-attr]
        chans = re.findall(r"`(\w+)`", names)
        assert len(chans) == int(last or first) - int(first) + 1, f"{title}: row {where} names {chans}"
        out += [(ch, scale, unit, _int(lo), _int(hi)) for ch in chans]
        pos += len(chans)
    return out


def _cddl_array(rule: str) -> list[str]:
    body = re.search(rf"^{rule} = \[(.*?)\]", CDDL, re.M | re.S)
    assert body, rule
    return re.findall(r"\? (\w+): value", body.group(1))


def test_core_contract_takes_kits_and_channels_from_the_firmware() -> None:
    assert [ch.name for ch in contract.AIR_CHANNELS] == list(wire.AIR_CHANNELS)
    assert [ch.name for ch in contract.TRAFFIC_CHANNELS] == list(wire.TRAFFIC_CHANNELS)
    assert {k: [ch.name for ch in v] for k, v in contract.CHANNELS.items()} == {k: list(v) for k, v in wire.CHANNELS.items()}
    assert contract.KIT_NAMES == {1: "air", 2: "traffic"} and contract.KITS == ("air", "traffic")
    assert {contract.KIT_NAMES[code]: code for code in contract.KIT_NAMES} == wire.KITS
    assert (contract.VERSION, contract.PREFIX, contract.MAX_READINGS, contract.MAX_PAYLOAD) == (
        wire.VERSION, wire.PREFIX, wire.MAX_READINGS, wire.MAX_PAYLOAD)
    assert contract.TRAFFIC_CLASSES == wire.TRAFFIC_CLASSES and contract.TRAFFIC_DIRECTIONS == wire.TRAFFIC_DIRECTIONS
    # the decoder finds each count and speed by name, never by an assumed layout
    for (d, cls), i in contract.TRAFFIC_COUNT_INDEX.items():
        assert wire.TRAFFIC_CHANNELS[i] == f"{d}_{cls}"
    for d, i in contract.TRAFFIC_SPEED_INDEX.items():
        assert wire.TRAFFIC_CHANNELS[i] == f"{d}_speed"
    assert len(contract.TRAFFIC_COUNT_INDEX) + len(contract.TRAFFIC_SPEED_INDEX) == len(wire.TRAFFIC_CHANNELS)


def test_readme_channel_tables_match_the_contract() -> None:
    for title, chans in (("### Air-quality kit (kit 1)", contract.AIR_CHANNELS),
                         ("### Traffic kit (kit 2)", contract.TRAFFIC_CHANNELS)):
        documented = _readme_channels(title)
        assert [d[0] for d in documented] == [ch.name for ch in chans], title
        for (name, scale, unit, lo, hi), ch in zip(documented, chans, strict=True):
            assert (scale, lo, hi) == (ch.scale, ch.lo, ch.hi), f"{name}: README says ×{scale} {lo}…{hi}"
            assert unit.startswith(ch.unit) or (ch.unit == "vehicles" and unit == "vehicles per interval"), (name, unit)


def test_readme_kit_codes_and_influx_schema_match_the_contract() -> None:
    flags = re.search(r"bits 1–3: kit \((\d) (\w+), (\d) (\w+)\)", README)
    assert flags, "the flags row no longer states the kit codes"
    assert {int(flags.group(1)): flags.group(2), int(flags.group(3)): flags.group(4)} == contract.KIT_NAMES
    assert re.search(r"^### Air-quality kit \(kit (\d)\)", README, re.M).group(1) == str(contract.KIT_AIR)  # type: ignore[union-attr]
    assert re.search(r"^### Traffic kit \(kit (\d)\)", README, re.M).group(1) == str(contract.KIT_TRAFFIC)  # type: ignore[union-attr]
    air_row = re.search(r"^\| `air` \| [^|]+ \| ([^|(]+) \(floats", README, re.M)
    assert air_row and [f.strip() for f in air_row.group(1).split(",")] == [ch.name for ch in contract.AIR_CHANNELS]
    classes = re.search(r"class \(([\w/]+)\)", README)
    assert classes and tuple(classes.group(1).split("/")) == contract.TRAFFIC_CLASSES
    directions = re.search(r"direction \(([\w/]+)\)", README)
    assert directions and tuple(directions.group(1).split("/")) == contract.TRAFFIC_DIRECTIONS


def test_readme_reasons_and_limits_match_the_contract() -> None:
    reasons = re.findall(r"^\| `(\w+)` \|", _section("## Limits and rejection reasons"), re.M)
    assert reasons == list(contract.REASONS)
    for name, value in re.findall(r"(\d[\d ]*)(?: bytes| s| days)[^|]*\(`(MAX_\w+)`", README):
        want = getattr(contract, value)
        assert _int(name) == (want // 86400 if value == "MAX_AGE_S" else want), value
    assert re.search(rf"0 or more than {contract.MAX_READINGS} readings", README)


def test_cddl_matches_the_contract() -> None:
    assert _cddl_array("air-reading") == [ch.name for ch in contract.AIR_CHANNELS]
    assert _cddl_array("traffic-reading") == [ch.name for ch in contract.TRAFFIC_CHANNELS]
    kits = dict(re.findall(r"^kit-(\w+) = (\d+)", CDDL, re.M))
    assert {int(code): name for name, code in kits.items()} == contract.KIT_NAMES
    assert re.search(rf"1\*{contract.MAX_READINGS} reading", CDDL)
    assert re.search(rf'"kit": {min(contract.KIT_NAMES)}\.\.{max(contract.KIT_NAMES)}', CDDL)


def test_vectors_state_the_channel_ranges(vectors: list[dict]) -> None:
    by_name = {v["name"]: v for v in vectors}
    for name, bound in (("air_channel_maxima", "hi"), ("air_channel_minima", "lo")):
        [[_, values]] = by_name[name]["input"]["readings"]["readings"]
        assert values == [getattr(ch, bound) for ch in contract.AIR_CHANNELS], name
    # every (direction, class) of the contract, and nothing else, appears in the traffic vectors' lines
    tags = {tuple(re.search(r",class=(\w+),device=\w+,direction=(\w+)", line).groups())  # type: ignore[union-attr]
            for v in vectors if v["valid"] for line in v["lines"] if line.startswith("traffic,")}
    assert tags == {(cls, d) for d in contract.TRAFFIC_DIRECTIONS for cls in contract.TRAFFIC_CLASSES}
    kits = {v["input"]["readings"]["kit"] for v in vectors if v["valid"] and "readings" in v["input"]}
    assert kits == set(contract.KIT_NAMES)


def test_analysis_derives_its_lists_from_the_contract() -> None:
    air = [ch.name for ch in contract.AIR_CHANNELS]
    assert sorted(schema.AIR_MEANS) == sorted(air)
    assert schema.AIR_COUNTED == contract.AIR_POLLUTANTS == ("pm1", "pm25", "pm10", "no2", "co2")
    assert query.TRAFFIC_CLASSES is contract.TRAFFIC_CLASSES
    assert set(limits.POLLUTANTS) <= set(contract.AIR_POLLUTANTS)
    assert set(report.LABEL) == set(limits.POLLUTANTS)
    assert set(ngsi_ld.AIR_PROPS) <= set(air)
    assert set(ngsi_ld.VEHICLE_TYPE) == set(contract.TRAFFIC_CLASSES)
    assert set(ngsi_ld.LANE) == set(contract.TRAFFIC_DIRECTIONS)


def test_kit_names_are_the_same_on_node_and_registry() -> None:
    for kit in contract.KITS:
        cfg = {"device": "00c0ffee", "kit": kit, "wifi": [{"ssid": "x"}], "mqtt": {"host": "h"}}
        assert node_config.validate(cfg)["kit"] == kit
        assert Device("00c0ffee", kit, "site").tags()["kit"] == kit
    with pytest.raises(node_config.ConfigError, match="kit"):
        node_config.validate({"device": "00c0ffee", "kit": "noise", "wifi": [{"ssid": "x"}], "mqtt": {"host": "h"}})


@pytest.mark.parametrize(("device", "raw"), [("00c0ffee", b"\x00\xc0\xff\xee"), ("ffffffff", b"\xff" * 4),
                                             ("00000000", bytes(4))])
def test_device_bytes(device: str, raw: bytes) -> None:
    assert contract.device_bytes(device) == raw
    assert raw.hex() == device


@pytest.mark.parametrize("bad", ["00C0FFEE", "00c0ffe", "00c0ffee0", " 0c0ffee", "+0c0ffee", "00c0ffeg", ""])
def test_device_bytes_refuses_what_is_not_a_device_id(bad: str) -> None:
    assert not contract.DEVICE_RE.match(bad)
    with pytest.raises(ValueError, match="8 lowercase hex digits"):
        contract.device_bytes(bad)


@pytest.mark.mpy
def test_device_bytes_on_micropython(micropython) -> None:  # type: ignore[no-untyped-def]
    script = (
        "from knode import wire\n"
        "print(wire.device_bytes('00c0ffee') == b'\\x00\\xc0\\xff\\xee', wire.KITS['traffic'])\n"
        "for bad in ('00C0FFEE', '00c0ffe', '+0c0ffee'):\n"
        "    try:\n"
        "        wire.device_bytes(bad)\n"
        "        print('accepted', bad)\n"
        "    except ValueError:\n"
        "        print('refused')\n"
    )
    out = micropython.run(script).check().stdout.split()
    assert out == ["True", "2", "refused", "refused", "refused"]
