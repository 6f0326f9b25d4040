"""The release key's custody and the release tool: keygen, sign, verify, push (resuming), and provisioning the key.

`kerbside release` runs in-process (Typer's runner); provisioning writes the
node's /release.pub onto an emulated board (the real MicroPython VM behind a
pseudo-terminal) and makes the firmware it uploads the one that runs.
"""

from __future__ import annotations

import json
import re
import stat
import sys
from pathlib import Path

import cbor2
import pytest
from typer.testing import CliRunner

from kerbside.cli import app
from kerbside.core import release as rel
from kerbside.core.registry import Registry
from kerbside.provisioning.bundle import DeviceFile
from kerbside.provisioning.node_config import NodeSpec, Profile
from kerbside.provisioning.release import _resume_point, firmware_version, reset_updates
from knode import p256

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.output


def test_keygen_makes_an_encrypted_key_once_and_never_overwrites_it(tmp_path: Path) -> None:
    key, pub, secret = tmp_path / "release.key", tmp_path / "release.pub", tmp_path / "pass"
    secret.write_text("correct horse battery staple\n")
    code, out = _run("release", "keygen", "--out", str(key), "--pub", str(pub), "--passphrase-file", str(secret))
    assert code == 0, out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"ENCRYPTED" in key.read_bytes() and pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    node_key = rel.node_key(pub)
    assert f"fingerprint {rel.fingerprint(node_key)}" in out
    assert rel.point(rel.load_private(key, b"correct horse battery staple")) == node_key
    with pytest.raises(rel.ReleaseError, match="passphrase is wrong"):
        rel.load_private(key, b"wrong")
    with pytest.raises(rel.ReleaseError, match="give the passphrase"):
        rel.load_private(key, None)
    before = key.read_bytes()
    code, out = _run("release", "keygen", "--out", str(key), "--pub", str(tmp_path / "other.pub"), "--no-passphrase")
    assert code == 2 and "exists: a release key is made once" in out
    assert key.read_bytes() == before and not (tmp_path / "other.pub").exists()


@pytest.mark.services  # mpy-cross
def test_sign_releases_the_firmware_package_only_and_verify_runs_the_nodes_check(tmp_path: Path) -> None:
    key, pub = tmp_path / "release.key", tmp_path / "release.pub"
    assert _run("release", "keygen", "--out", str(key), "--pub", str(pub), "--no-passphrase")[0] == 0
    out_file = tmp_path / "r.kota"
    code, out = _run("release", "sign", "--key", str(key), "--no-passphrase", "--seq", "4242", "--out", str(out_file))
    assert code == 0, out
    r = rel.Release.from_bytes(out_file.read_bytes())
    fw = firmware_version(ROOT / "firmware")
    assert (r.seq, r.fw) == (4242, fw)
    expected = sorted(p.relative_to(ROOT / "firmware").with_suffix(".mpy").as_posix()
                      for p in (ROOT / "firmware" / "knode").rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(p.removeprefix("/lib/") for p in r.paths) == expected  # no main.py, no boot.py
    assert all(d.startswith(b"M\x06") for d in r.files)  # mpy v6 for the node
    assert int.from_bytes(r.sig[32:], "big") <= p256.HALF_N and rel.check_signature(rel.node_key(pub), r.manifest, r.sig)
    code, out = _run("release", "verify", str(out_file), "--pub", str(pub))
    assert code == 0 and out.startswith(f"OK: firmware {fw}, release 4242, {len(expected)} files")
    # the node's own checks, run by verify: a newer release on the node, another key, changed content
    code, out = _run("release", "verify", str(out_file), "--pub", str(pub), "--seen", "4242")
    assert code == 1 and "release 4242 is not newer than 4242" in out
    other = tmp_path / "other"
    assert _run("release", "keygen", "--out", str(other), "--pub", str(other) + ".pub", "--no-passphrase")[0] == 0
    code, out = _run("release", "verify", str(out_file), "--pub", str(other) + ".pub")
    assert code == 1 and "bad signature" in out
    raw = cbor2.loads(out_file.read_bytes())
    raw["files"][3] = raw["files"][3][:-1] + bytes([raw["files"][3][-1] ^ 1])
    (tmp_path / "bad.kota").write_bytes(cbor2.dumps(raw))
    code, out = _run("release", "verify", str(tmp_path / "bad.kota"), "--pub", str(pub))
    assert code == 1 and f"{r.paths[3]}: content differs from the manifest" in out


def test_the_release_tool_refuses_to_sign_what_a_node_would_refuse() -> None:
    key = rel.new_key()
    good = [(f"/lib/knode/{m}.py", b"x = 1\n") for m in ("__init__", "node", "ota", "ota_receive", "p256")]
    with pytest.raises(rel.ReleaseError, match=re.escape("'/config.json' is outside the firmware")):
        rel.build([*good, ("/config.json", b"{}")], 1, "x", key)
    with pytest.raises(rel.ReleaseError, match="must contain knode/p256"):
        rel.build(good[:4], 1, "x", key)
    with pytest.raises(rel.ReleaseError, match=re.escape("/lib/knode/node.mpy twice")):
        rel.build([*good, ("/lib/knode/node.mpy", b"")], 1, "x", key)


def test_push_reads_where_to_resume_from_the_nodes_error() -> None:
    assert _resume_point("ota: expected file 3 at 4096") == (3, 4096)
    assert _resume_point("ota: bad signature") is None


def test_push_refuses_what_is_not_a_device_id_before_connecting(tmp_path: Path) -> None:
    (tmp_path / "r.kota").write_bytes(rel.Release(b"", b"", ()).to_bytes())
    code, out = _run("release", "push", str(tmp_path / "r.kota"), "c0ffee01", "NODE-7", "--broker", "mqtt://127.0.0.1:1")
    assert code == 2 and "not device ids: NODE-7" in out
    code, out = _run("release", "push", str(tmp_path / "r.kota"), "c0ffee01", "--broker", "mqtt://127.0.0.1:1")
    assert code == 1 and "its manifest is not a v1 manifest" in out


class _Repl:
    """What reset_updates uses of a RawRepl: a dict for a flash."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def read_file(self, path: str) -> bytes | None:
        return self.files.get(path)

    def write_file(self, path: str, data: bytes) -> None:
        self.files[path] = data


def test_reprovisioning_runs_the_uploaded_firmware_and_keeps_the_replay_floor() -> None:
    flash = {"/ota.json": json.dumps({"cur": "b", "prev": "", "state": "ok", "seq": 300, "fw": "3.0.0",
                                      "seen": 300}).encode()}
    notes: list[str] = []
    reset_updates(_Repl(flash), notes)
    j = json.loads(flash["/ota.json"])
    assert (j["cur"], j["state"], j["seq"], j["seen"]) == ("", "ok", 0, 300)
    assert notes == ["the node ran update '3.0.0' (release 300); the firmware just uploaded replaces it "
                     "(releases up to 300 stay refused)"]
    reset_updates(_Repl(flash), notes)  # nothing more to do
    assert len(notes) == 1
    empty: dict[str, bytes] = {}
    reset_updates(_Repl(empty), notes)
    assert empty == {}


@pytest.mark.mpy
@pytest.mark.services
def test_provision_writes_the_release_key_to_the_node(micropython, tmp_path: Path) -> None:
    sys.path.append(str(ROOT / "tests" / "provisioning"))
    from prov_helpers import start_board

    from kerbside.provisioning.provision import provision
    from kerbside.provisioning.rawrepl import RawRepl

    key = rel.new_key()
    pub = tmp_path / "release.pub"
    pub.write_bytes(rel.public_pem(key))
    profile = Profile(wifi=[{"ssid": "depot", "psk": "depot-wifi-key"}], host="mqtt.city.example", tls=False,
                      release_key=pub)
    board = start_board()
    try:
        with RawRepl(board.port, write_pause=0) as repl:
            repl.write_file("/ota.json", json.dumps({"cur": "a", "state": "ok", "seq": 9, "fw": "9", "seen": 9}).encode())
        firmware = [DeviceFile("/main.py", (ROOT / "firmware" / "main.py").read_bytes()),
                    DeviceFile("/lib/knode/__init__.py", b""),
                    DeviceFile("/lib/knode/p256.py", (ROOT / "firmware" / "knode" / "p256.py").read_bytes())]
        out = provision(board.port, NodeSpec(kit="air", site="pole 1"), profile, Registry(tmp_path / "r.json"), firmware,
                        run_selftest=False, connect=lambda p: RawRepl(p, write_pause=0))
        with RawRepl(board.port, write_pause=0) as repl:
            on_node = repl.read_file("/release.pub")
            journal = json.loads(repl.read_file("/ota.json") or b"{}")
            # the node's own code reads the key it was given
            check = repl.exec("from knode import p256\nprint(p256.public_key(open('/release.pub','rb').read())[0])")
    finally:
        board.stop()
    assert on_node == rel.point(key) and len(on_node) == 65
    assert check.strip() == str(p256.public_key(rel.point(key))[0])
    assert "/release.pub" in out.uploaded
    assert (journal["cur"], journal["seen"]) == ("", 9)
    assert any("ran update '9'" in n for n in out.notes)
