"""Technician traps, played on emulated boards (the real MicroPython VM behind a pseudo-terminal) with the CLI.

Rows 8 to 11 of the review: a batch on one port provisioned the same board three times; the follow-up command
`registry rotate` printed cleared a node's zone and location; the self-test after a firmware upload tested the
old, already imported modules; a Wi-Fi key with a backslash and a quote leaked through a crashing self-test.
And `kerbside flash` on a port that is not an ESP32.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from prov_helpers import EmulatedBoard, start_board
from sec_helpers import kerbside

from kerbside.core.registry import Registry
from kerbside.provisioning import batch, bundle, pki
from kerbside.provisioning.node_config import NodeSpec, Profile
from kerbside.provisioning.provision import provision
from kerbside.provisioning.rawrepl import RawRepl

pytestmark = pytest.mark.services  # the MicroPython VM, mpy-cross

PSK = 'WIFI\\KEY"it\'s-é'
"""A Wi-Fi key a city may well have: a backslash, both quotes, a non-ASCII letter."""


@pytest.fixture
def depot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A depot laptop: the [node] profile and registry through the environment, the Wi-Fi key in $KERBSIDE_NODE_WIFI_PSK."""
    (tmp_path / "ca.pem").write_bytes(pki.generate_ca().cert_pem)
    profile = tmp_path / "depot.toml"
    profile.write_text('[node]\nbroker_host = "mqtt.city.example"\nca = "ca.pem"\nwifi_ssid = "depot"\n')
    monkeypatch.setenv("KERBSIDE_CONFIG", str(profile))
    monkeypatch.setenv("KERBSIDE_REGISTRY_PATH", str(tmp_path / "registry.json"))
    monkeypatch.setenv("KERBSIDE_NODE_WIFI_PSK", PSK)
    return tmp_path


def config_on(port: str) -> dict:
    with RawRepl(port, write_pause=0) as repl:
        raw = repl.read_file("/config.json")
    assert raw is not None
    return json.loads(raw)


def firmware_variant(standin_dir: Path, dest: Path, selftest: str | None = None, marker: str = "") -> Path:
    fw = Path(shutil.copytree(standin_dir, dest))
    path = fw / "knode" / "selftest.py"
    if selftest is not None:
        path.write_text(selftest)
    if marker:
        path.write_text(path.read_text().replace('" at " + c["site"]', f'" at " + c["site"] + " {marker}"'))
    return fw


def test_one_port_batch_asks_for_the_next_node_and_refuses_the_same_board_twice(board: EmulatedBoard, depot: Path,
                                                                              standin_dir: Path) -> None:
    """Row 8: three rows, one --port, the technician presses Enter without swapping the board."""
    csv = depot / "nodes.csv"
    csv.write_text("kit,site,zone\nair,Bench A,lez\nair,Bench B,lez\ntraffic,Bench C,control\n")
    r = kerbside(None, "provision", "--batch", str(csv), "--port", board.port, "--firmware-dir", str(standin_dir),
                 input="\n\n")  # Enter twice, then nothing more: the technician walked away
    text = " ".join(r.output.split())
    assert r.exit_code == 1, r.output
    devices = Registry(depot / "registry.json").load()
    assert [d.site for d in devices.values()] == ["Bench A"]
    (device_id,) = devices
    assert text.count(f"this is the board already provisioned as line 2 ({device_id})") == 2, text
    assert "Line 3 (Bench B): plug the next node into" in text
    assert "line 3: no next node (no answer from the keyboard)" in text
    assert "not provisioned: line 3: no next node" in text  # line 4 was not attempted
    assert "1 of 3 nodes passed (1 distinct boards)" in text
    assert config_on(board.port)["site"] == "Bench A"


def test_one_port_batch_provisions_each_board_it_is_given(depot: Path, standin_dir: Path, micropython: object,
                                                          tmp_path: Path) -> None:
    """The same flow when the technician does swap boards: the port (a symlink here) leads to the next board."""
    boards = [start_board(), start_board()]
    port = tmp_path / "ttyUSB0"
    port.symlink_to(boards[0].port)
    swaps = []

    def next_node(row: batch.Row, why: str) -> None:
        swaps.append((row.line, why))
        port.unlink()
        port.symlink_to(boards[1].port)

    profile = Profile(wifi=[{"ssid": "depot", "psk": PSK}], host="mqtt.city.example", ca=depot / "ca.pem")
    registry = Registry(depot / "registry.json")
    files = bundle.build(standin_dir)
    rows = [batch.Row(2, str(port), NodeSpec("air", "Bench A", "lez")), batch.Row(3, str(port), NodeSpec("air", "Bench B"))]
    try:
        results = batch.run(rows, lambda row, seen: provision(row.port, row.spec, profile, registry, files, refuse=seen,
                                                              connect=lambda p: RawRepl(p, write_pause=0)),
                            next_node=next_node)
        assert [r.ok for r in results] == [True, True] and swaps == [(3, "")]
        assert sorted(d.site for d in registry.load().values()) == ["Bench A", "Bench B"]
        assert [config_on(b.port)["site"] for b in boards] == ["Bench A", "Bench B"]
    finally:
        for b in boards:
            b.stop()


def test_reprovisioning_as_rotate_says_keeps_the_registry_fields(board: EmulatedBoard, depot: Path,
                                                                  standin_dir: Path) -> None:
    """Row 9: `registry rotate` prints the follow-up; run as printed, zone and location stay; a change is confirmed."""
    first = kerbside(None, "provision", "-p", board.port, "--kit", "air", "--site", "Ringstrasse 12", "--zone", "lez-inner",
                     "--lat", "48.2083", "--lon", "16.3731", "--firmware-dir", str(standin_dir))
    assert first.exit_code == 0, first.output
    registry = Registry(depot / "registry.json")
    (dev,) = registry.load().values()
    r = kerbside(None, "registry", "rotate", dev.id)
    assert r.exit_code == 0 and "run kerbside provision to give it the new secret" in " ".join(r.output.split())
    again = kerbside(None, "provision", "-p", board.port, "--firmware-dir", str(standin_dir))  # as printed (+ the port)
    assert again.exit_code == 0 and "kept its identity" in again.output and "changed:" not in again.output, again.output
    after = registry.get(dev.id)
    assert after is not None
    assert (after.kit, after.site, after.zone, after.lat, after.lon, after.credential) == (
        "air", "Ringstrasse 12", "lez-inner", 48.2083, 16.3731, 3)  # 2: rotated, 3: the new secret on the node
    node = config_on(board.port)
    assert (node["zone"], node["site"], node["credential"]) == ("lez-inner", "Ringstrasse 12", 3)
    # A flag that changes something: the change is shown, and not written unless confirmed.
    no = kerbside(None, "provision", "-p", board.port, "--zone", "control", "--firmware-dir", str(standin_dir), input="n\n")
    assert no.exit_code == 1 and "zone: 'lez-inner' -> 'control'" in no.output and "not confirmed" in no.output
    assert registry.get(dev.id).zone == "lez-inner" and config_on(board.port)["zone"] == "lez-inner"  # type: ignore[union-attr]
    yes = kerbside(None, "provision", "-p", board.port, "--zone", "control", "--firmware-dir", str(standin_dir), input="y\n")
    assert yes.exit_code == 0 and "changed: zone: 'lez-inner' -> 'control'" in yes.output, yes.output
    assert registry.get(dev.id).zone == "control" and config_on(board.port)["zone"] == "control"  # type: ignore[union-attr]
    assert registry.get(dev.id).lat == 48.2083  # type: ignore[union-attr]


def test_the_selftest_runs_the_firmware_just_installed(board: EmulatedBoard, depot: Path, standin_dir: Path,
                                                       tmp_path: Path) -> None:
    """Row 10: the board still has the old firmware's modules imported (its main.py ran them); after the upload
    it is restarted, so the self-test is the new firmware's."""
    old = firmware_variant(standin_dir, tmp_path / "old", marker="firmware 1")
    new = firmware_variant(standin_dir, tmp_path / "new", marker="firmware 2")
    args = ["provision", "-p", board.port, "--kit", "air", "--site", "Depot bench"]
    r = kerbside(None, *args, "--firmware-dir", str(old))
    assert r.exit_code == 0 and "firmware 1" in r.output, r.output
    with RawRepl(board.port, write_pause=0) as repl:  # what main.py does at boot: the firmware is imported
        assert "firmware 1" in repl.exec("from knode import selftest\nselftest.run()")
    r = kerbside(None, *args, "--firmware-dir", str(new))
    assert r.exit_code == 0, r.output
    assert "firmware 2" in r.output and "firmware 1" not in r.output


@pytest.mark.parametrize("selftest", [
    "import json\ndef run():\n    raise ValueError(json.load(open('/config.json')))\n",  # a traceback: repr of the config
    "import json\ndef run():\n    print(json.dumps(json.load(open('/config.json'))))\n",  # no verdict: JSON in the tail
], ids=["traceback", "json"])
def test_no_secret_in_any_output_whatever_its_characters(board: EmulatedBoard, depot: Path, standin_dir: Path,
                                                         tmp_path: Path, selftest: str) -> None:
    """Row 11: the Wi-Fi key WIFI\\KEY"it's-é and the node's secret, printed escaped by a broken self-test."""
    fw = firmware_variant(standin_dir, tmp_path / "fw", selftest=selftest)
    r = kerbside(None, "provision", "-p", board.port, "--kit", "air", "--site", "Bench", "--firmware-dir", str(fw))
    assert r.exit_code == 1 and "<redacted>" in r.output, r.output
    password = config_on(board.port)["mqtt"]["password"]
    for secret in (PSK, password):
        for form in (secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
                     "KEY"):
            assert form not in r.output, form


def test_flash_on_a_port_that_is_not_an_esp32_says_so(board: EmulatedBoard, tmp_path: Path) -> None:
    """The emulated board answers esptool with MicroPython's REPL, as a board running its firmware would."""
    image = tmp_path / "ESP32_GENERIC-v1.27.0.bin"
    image.write_bytes(bytes([0xE9, 3, 2, 0x20]) + bytes(12) + bytes(4096))
    r = kerbside(None, "flash", "-p", board.port, "--firmware", str(image))
    text = " ".join(r.output.split())
    assert r.exit_code == 1, r.output
    assert f"{board.port} answered, but not as an ESP32's bootloader does" in text
    assert "This is not an ESP32 node" in text and "Hold the BOOT (IO0) button" in text
    for noise in ("Chip was NOT reset", "Failed to get VID/PID", "WARNING", "Connecting"):
        assert noise not in r.output, noise
    verbose = kerbside(None, "flash", "-p", board.port, "--firmware", str(image), "--verbose")
    assert verbose.exit_code == 1 and "Failed to get VID/PID" in verbose.output and "Connecting" in verbose.output
    assert os.path.exists(board.port)
