"""Provisioning end to end onto an emulated board: the real MicroPython VM behind a pseudo-terminal."""

from __future__ import annotations

import json
import os
import tty
from pathlib import Path

import pytest

from kerbside.core.registry import Registry
from kerbside.provisioning import fleet, pki
from kerbside.provisioning.node_config import ConfigError, NodeSpec, Profile
from kerbside.provisioning.passwd import verify_password
from kerbside.provisioning.provision import provision
from kerbside.provisioning.rawrepl import RawRepl, ReplError
from kerbside.provisioning.selftest import EXPECTED_CHECKS

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG_KEYS = {"v", "device", "kit", "site", "zone", "wifi", "mqtt", "ntp", "period", "sample", "status_every",
               "credential", "cfg", "cal"}
MQTT_KEYS = {"host", "port", "brokers", "tls", "user", "password", "ca", "keepalive"}


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(pki.generate_ca().cert_pem)
    return path


@pytest.fixture
def profile(ca_file: Path) -> Profile:
    return Profile(wifi=[{"ssid": "depot", "psk": "depot-wifi-key"}], host="mqtt.city.example", ca=ca_file)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry.json")


NO_FIRMWARE: list = []
"""For checks that fail before any file is uploaded: nothing to build (mpy-cross is a process)."""

AIR = NodeSpec(kit="air", site="Ringstrasse 12", zone="lez-inner", lat=48.2, lon=16.37)


def board_config(port: str, repl_factory) -> dict:
    with repl_factory(port) as repl:
        raw = repl.read_file("/config.json")
    assert raw is not None
    return json.loads(raw)


@pytest.mark.services
def test_provision_end_to_end(board, registry, profile, firmware_files, fast_repl, ca_file) -> None:
    messages: list[str] = []
    out = provision(board.port, AIR, profile, registry, firmware_files, connect=fast_repl, say=messages.append)
    assert out.new_identity
    # The firmware's own config reader accepts what provisioning wrote; the emulator has no radio or sensors.
    checks = {c.name: (c.ok, c.detail) for c in out.selftest.checks}
    assert list(checks) == list(EXPECTED_CHECKS)
    assert checks["config"] == (True, f"device {out.device_id} kit air cfg 1")
    assert checks["sensors"] == (False, "no hardware") and not out.ok
    assert sorted(out.uploaded) == sorted([f.path for f in firmware_files] + ["/ca.pem"])

    dev = registry.get(out.device_id)
    assert dev is not None and dev.active
    assert (dev.kit, dev.site, dev.zone, dev.lat) == ("air", "Ringstrasse 12", "lez-inner", 48.2)
    cfg = board_config(board.port, fast_repl)
    assert set(cfg) == CONFIG_KEYS and set(cfg["mqtt"]) == MQTT_KEYS
    assert cfg["device"] == cfg["mqtt"]["user"] == out.device_id
    assert (cfg["v"], cfg["kit"], cfg["credential"], cfg["cfg"], cfg["cal"]) == (1, "air", 1, 1, {})
    assert cfg["mqtt"]["ca"] == "/ca.pem" and cfg["mqtt"]["port"] == 8883 and cfg["mqtt"]["tls"] is True
    assert cfg["mqtt"]["brokers"] == [[cfg["mqtt"]["host"], 8883]], "one broker: the list is that broker"
    assert len(cfg["mqtt"]["password"]) >= 32 and verify_password(cfg["mqtt"]["password"], dev.password_hash)
    assert all(cfg["mqtt"]["password"] not in m for m in messages)

    with fast_repl(board.port) as repl:
        assert repl.read_file("/ca.pem") == ca_file.read_bytes()
        on_board = [f"/lib/knode/{n}" for n in repl.listdir("/lib/knode")]
        on_board += [f"/lib/knode/drivers/{n}" for n in repl.listdir("/lib/knode/drivers")]
        assert sorted(p for p in on_board if "." in p.rsplit("/", 1)[1]) == sorted(
            f.path for f in firmware_files if f.path.startswith("/lib/"))
        assert repl.read_file("/main.py") == (ROOT / "firmware" / "main.py").read_bytes()
        # The uploaded .mpy files are what the node imports, and they work.
        printed = repl.exec(f"from knode import wire\nprint(wire.topic({out.device_id!r}, 'readings'))")
        assert printed.strip() == f"kerbside/v1/{out.device_id}/readings"
        assert "knode/wire.mpy" in repl.exec("import knode.wire\nprint(knode.wire.__file__)")


@pytest.mark.services
def test_reprovision_keeps_identity_and_skips_unchanged_files(board, registry, profile, standin_files, fast_repl) -> None:
    first = provision(board.port, AIR, profile, registry, standin_files, connect=fast_repl)
    secret = board_config(board.port, fast_repl)["mqtt"]["password"]
    again = provision(board.port, AIR, profile, registry, standin_files, connect=fast_repl)
    assert again.ok and again.device_id == first.device_id and not again.new_identity and not again.new_secret
    assert again.uploaded == [] and len(again.unchanged) == len(standin_files) + 1
    cfg = board_config(board.port, fast_repl)
    assert cfg["mqtt"]["password"] == secret and cfg["cfg"] == 1
    moved = NodeSpec(kit="air", site="Ringstrasse 14", zone="lez-inner")
    third = provision(board.port, moved, profile, registry, standin_files, connect=fast_repl)
    cfg = board_config(board.port, fast_repl)
    assert third.device_id == first.device_id and cfg["site"] == "Ringstrasse 14" and cfg["cfg"] == 2
    assert registry.get(first.device_id).site == "Ringstrasse 14"
    assert list(registry.load()) == [first.device_id]


@pytest.mark.services
def test_new_identity_retires_the_old_one(board, registry, profile, standin_files, fast_repl) -> None:
    first = provision(board.port, AIR, profile, registry, standin_files, connect=fast_repl)
    second = provision(board.port, AIR, profile, registry, standin_files, connect=fast_repl, new_identity=True)
    assert second.new_identity and second.device_id != first.device_id
    devices = registry.load()
    assert devices[first.device_id].status == "decommissioned" and devices[first.device_id].password_hash == ""
    assert devices[second.device_id].active
    assert board_config(board.port, fast_repl)["device"] == second.device_id


@pytest.mark.services
def test_reprovision_after_rotation_issues_the_new_credential(board, registry, profile, standin_files, fast_repl) -> None:
    first = provision(board.port, AIR, profile, registry, standin_files, connect=fast_repl)
    old = board_config(board.port, fast_repl)["mqtt"]["password"]
    fleet.rotate(registry, first.device_id)  # secret discarded: the node must be re-provisioned
    again = provision(board.port, AIR, profile, registry, standin_files, connect=fast_repl)
    cfg = board_config(board.port, fast_repl)
    assert again.device_id == first.device_id and again.new_secret
    assert cfg["mqtt"]["password"] != old and cfg["credential"] == 3
    assert verify_password(cfg["mqtt"]["password"], registry.get(first.device_id).password_hash)


@pytest.mark.services
def test_failed_check_shows_in_the_result(board, registry, profile, firmware_files, fast_repl) -> None:
    """The real self-test on a board without radio or sensors: its failures reach the result as the node said them."""
    out = provision(board.port, AIR, profile, registry, firmware_files, connect=fast_repl)
    assert not out.ok and out.selftest is not None
    assert [(c.name, c.detail) for c in out.selftest.failed] == [(n, "no hardware") for n in ("sensors", "wifi", "broker",
                                                                                           "publish")]
    # The node is provisioned all the same: fixing Wi-Fi and re-running keeps its identity.
    assert registry.get(out.device_id).active


@pytest.mark.services
def test_stale_source_modules_are_removed(board, registry, profile, standin_files, fast_repl) -> None:
    with fast_repl(board.port) as repl:
        repl.write_file("/lib/knode/wire.py", b"raise ImportError('stale source shadows wire.mpy')\n")
    out = provision(board.port, AIR, profile, registry, standin_files, connect=fast_repl)
    assert out.removed == ["/lib/knode/wire.py"] and out.ok


def test_no_repl_on_the_port_is_a_clear_error(registry, profile) -> None:
    master, slave = os.openpty()  # a serial port with nothing behind it
    tty.setraw(slave)
    try:
        with pytest.raises(ReplError, match=r"no MicroPython REPL on .*kerbside flash"):
            provision(os.ttyname(slave), AIR, profile, registry, NO_FIRMWARE,
                      connect=lambda p: RawRepl(p, timeout=0.3, write_pause=0))
    finally:
        os.close(master)
        os.close(slave)
    assert registry.load() == {}


def test_missing_port_is_a_clear_error(registry, profile) -> None:
    with pytest.raises(ReplError, match=r"cannot open /dev/ttyUSB-nonexistent"):
        provision("/dev/ttyUSB-nonexistent", AIR, profile, registry, NO_FIRMWARE)


@pytest.mark.parametrize("spec,message", [
    (NodeSpec(kit="noise", site="x"), "kit must be one of air, traffic"),
    (NodeSpec(kit="air", site="  "), "site must not be empty"),
    (NodeSpec(kit="air", site="x", lat=48.0), "both --lat and --lon"),
    (NodeSpec(kit="air", site="x", lat=91.0, lon=0.0), "latitude 91.0"),
])
def test_bad_node_spec_refused_before_touching_the_board(spec, message, registry, profile) -> None:
    with pytest.raises(ConfigError, match=message):
        provision("/dev/not-opened", spec, profile, registry, NO_FIRMWARE)


def test_profile_without_broker_or_wifi_refused(registry, ca_file) -> None:
    with pytest.raises(ConfigError, match="no broker host"):
        provision("/dev/x", AIR, Profile(wifi=[{"ssid": "a", "psk": "12345678"}], ca=ca_file), registry, NO_FIRMWARE)
    with pytest.raises(ConfigError, match="no Wi-Fi network"):
        provision("/dev/x", AIR, Profile(host="h", ca=ca_file), registry, NO_FIRMWARE)
    with pytest.raises(ConfigError, match=r"8\.\.63 characters"):
        provision("/dev/x", AIR, Profile(host="h", ca=ca_file, wifi=[{"ssid": "a", "psk": "short"}]), registry, NO_FIRMWARE)


@pytest.mark.services
def test_selftest_crash_is_reported_without_the_secret(board, registry, profile, standin_dir, fast_repl, tmp_path) -> None:
    """Whatever a broken self-test prints, the node's secret and the Wi-Fi key never reach the technician's screen."""
    import shutil

    from kerbside.provisioning import bundle
    from kerbside.provisioning.selftest import SelfTestError

    fw = tmp_path / "fw"
    shutil.copytree(standin_dir, fw)
    (fw / "knode" / "selftest.py").write_text(
        "import json\ndef run():\n    c = json.load(open('/config.json'))\n"
        "    raise RuntimeError(c['mqtt']['password'] + ' ' + c['wifi'][0]['psk'])\n")
    with pytest.raises(SelfTestError) as e:
        provision(board.port, AIR, profile, registry, bundle.build(fw), connect=fast_repl)
    secret = board_config(board.port, fast_repl)["mqtt"]["password"]
    assert "crashed on the node" in str(e.value) and "RuntimeError: <redacted> <redacted>" in str(e.value)
    assert secret not in str(e.value) and "depot-wifi-key" not in str(e.value)


@pytest.mark.services
def test_corrupted_upload_never_replaces_the_good_file(board, fast_repl, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transfer whose hash does not match on the board leaves the previous file in place and no .part behind."""
    from kerbside.provisioning.rawrepl import TransferError

    with fast_repl(board.port) as repl:
        repl.write_file("/lib/knode/x.mpy", b"good")
        real = repl.sha256
        monkeypatch.setattr(repl, "sha256", lambda path: "0" * 64 if path.endswith(".part") else real(path))
        with pytest.raises(TransferError, match="hash mismatch after upload"):
            repl.write_file("/lib/knode/x.mpy", b"new contents")
        assert repl.read_file("/lib/knode/x.mpy") == b"good"
        assert repl.listdir("/lib/knode") == ["x.mpy"]


@pytest.mark.services
def test_node_from_another_registry_gets_a_new_identity(board, registry, profile, standin_files, fast_repl, tmp_path) -> None:
    other = Registry(tmp_path / "other-depot.json")
    first = provision(board.port, AIR, profile, other, standin_files, connect=fast_repl)
    again = provision(board.port, AIR, profile, registry, standin_files, connect=fast_repl)
    assert again.new_identity and again.device_id != first.device_id
    assert again.notes == [f"the node's id {first.device_id} is not in {registry.path}: issued a new one (wrong --registry?)"]
