"""The commands as a technician runs them: exit codes, tables, next steps, and never a secret on screen."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from prov_helpers import add_device, start_board
from typer.testing import CliRunner

from kerbside.cli import app
from kerbside.core.registry import Registry
from kerbside.provisioning import pki
from kerbside.provisioning.ports import Candidate, PortError, choose
from kerbside.provisioning.rawrepl import RawRepl

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables wrap at 80 columns; a wide console keeps each message on one line for the assertions."""
    from kerbside.provisioning import cli

    monkeypatch.setattr(cli.console, "width", 250)
    monkeypatch.setattr(cli.err, "width", 250)


@pytest.fixture
def depot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A depot profile (the settings' [node] section) and registry, wired up through the environment as a depot
    laptop would be."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.generate_ca().cert_pem)
    profile = tmp_path / "depot.toml"
    profile.write_text('[node]\nbroker_host = "mqtt.city.example"\nca = "ca.pem"\nperiod = 60\n\n'
                       '[[node.wifi]]\nssid = "depot"\npsk = "depot-wifi-key-42"\n')
    profile.chmod(0o600)
    monkeypatch.setenv("KERBSIDE_CONFIG", str(profile))
    monkeypatch.setenv("KERBSIDE_REGISTRY_PATH", str(tmp_path / "registry.json"))
    monkeypatch.delenv("KERBSIDE_BROKER_DIR", raising=False)
    return tmp_path


def secret_on(port: str) -> str:
    with RawRepl(port, write_pause=0) as repl:
        raw = repl.read_file("/config.json")
    assert raw is not None
    return json.loads(raw)["mqtt"]["password"]


@pytest.mark.services
def test_provision_prints_pass_table_and_no_secret(board, depot: Path, standin_dir: Path) -> None:
    args = ["provision", "--port", board.port, "--kit", "traffic", "--site", "Brücke Süd", "--firmware-dir", str(standin_dir),
            "--broker-dir", str(depot / "broker")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    device_id = next(iter(Registry(depot / "registry.json").load()))
    assert f"{device_id}:$7$" in (depot / "broker" / "passwd").read_text()
    assert f"Node {device_id}" in first.output and "new identity" in first.output
    assert first.output.count("PASS") == 6  # five checks and the verdict
    secret = secret_on(board.port)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "kept its identity" in again.output
    for out in (first.output, again.output):
        assert secret not in out and "depot-wifi-key-42" not in out
    listed = runner.invoke(app, ["registry", "list"])
    assert device_id in listed.output and "Brücke Süd" in listed.output


@pytest.mark.services
def test_provision_failing_check_exits_1_with_next_step(board, depot: Path) -> None:
    """The shipped firmware's self-test on a board without radio or sensors: config passes, the rest fails."""
    r = runner.invoke(app, ["provision", "-p", board.port, "--kit", "air", "--site", "Depot bench"])
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output and "re-run the same command" in r.output
    assert r.output.count("no hardware") == 4


@pytest.mark.services
@pytest.mark.parametrize("parallel", [False, True], ids=["in-turn", "parallel"])
def test_batch_goes_on_after_a_failed_node(depot: Path, standin_dir: Path, micropython, parallel: bool) -> None:
    boards = [start_board(), start_board()]
    try:
        csv = depot / "nodes.csv"
        csv.write_text(f"port,kit,site,zone\n{boards[0].port},air,Bench A,lez\n/dev/ttyUSB-unplugged,air,Bench B,lez\n"
                       f"{boards[1].port},traffic,Bench C,control\n")
        r = runner.invoke(app, ["provision", "--batch", str(csv), "--firmware-dir", str(standin_dir),
                                *(["--parallel"] if parallel else [])])
        text = " ".join(r.output.split())
        assert r.exit_code == 1, r.output
        assert "2 of 3 nodes passed" in text and "ERROR" in text and "cannot open /dev/ttyUSB-unplugged" in text
        devices = Registry(depot / "registry.json").load()
        assert sorted(d.site for d in devices.values()) == ["Bench A", "Bench C"]
        lines = [line for line in r.output.splitlines() if "Bench" in line]
        assert [line.split()[1] for line in lines] == ["2", "3", "4"]  # summary in file order
        assert all(secret_on(b.port) not in r.output for b in boards)
    finally:
        for b in boards:
            b.stop()


def test_batch_rejects_a_malformed_file_before_touching_nodes(depot: Path) -> None:
    csv = depot / "nodes.csv"
    csv.write_text("port,kit,site,lat,lon\n/dev/ttyUSB0,air,A,48.1,16.3\n/dev/ttyUSB1,noise,B,,\n/dev/ttyUSB2,air,C,48.1,\n"
                   "/dev/ttyUSB3,air,D,north,16.3\n")
    r = runner.invoke(app, ["provision", "--batch", str(csv)])
    assert r.exit_code == 2
    for expected in ("line 3: kit must be one of air, traffic", "line 4: give both --lat and --lon",
                     "line 5: lat 'north' is not a number", "no node was touched"):
        assert expected in r.output.replace("\n", " ") or expected in " ".join(r.output.split()), r.output


@pytest.mark.services
def test_provision_usage_errors(board, depot: Path) -> None:
    r = runner.invoke(app, ["provision", "--port", board.port, "--no-selftest"])  # a new board, and no kit or site
    assert r.exit_code == 2 and "this board is a new node" in r.output and "pass --kit and --site" in r.output
    r = runner.invoke(app, ["provision", "--port", "/dev/ttyUSB-gone", "--kit", "air", "--site", "x"])
    assert r.exit_code == 1 and "cannot open /dev/ttyUSB-gone: no such port: is the node plugged in" in r.output
    assert Registry(depot / "registry.json").load() == {}


def test_broker_config_decommission_and_rotate(depot: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(depot / "registry.json")
    add_device(reg, "0c0c0c01")
    add_device(reg, "0c0c0c02")
    out = depot / "broker"
    assert runner.invoke(app, ["broker-config", "--out", str(out)]).exit_code == 2
    r = runner.invoke(app, ["broker-config", "--out", str(out), "--host", "mqtt.city.example", "--state-dir", str(depot)])
    assert r.exit_code == 0, r.output
    # Secrets mosquitto reads: readable by its group from the first byte when rendered as root; the rest 0600.
    broker_group = _group_of_user("mosquitto") if os.geteuid() == 0 else None
    for name in ("passwd", "passwd.internal", "server.key"):
        st = (out / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == ((0o640, broker_group) if broker_group is not None else
                                                           (0o600, os.getgid())), name
    for name in ("kerbside-collector.secret", "kerbside-operator.secret", "ca.key"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    for name in ("kerbside-collector.secret", "kerbside-operator.secret"):
        assert (out / name).read_text().strip() not in r.output
    assert "mqtt.username = mqtt.client_id = kerbside-collector" in " ".join(r.output.split())
    ca_before = (out / "ca.pem").read_bytes()
    assert "max_queued_messages 100000" in (out / "mosquitto.conf").read_text()

    monkeypatch.setenv("KERBSIDE_BROKER_DIR", str(out))
    r = runner.invoke(app, ["registry", "decommission", "0c0c0c01", "--reason", "stolen", "--yes"])
    assert r.exit_code == 0 and "SIGHUP" not in r.output and "kill -HUP" in " ".join(r.output.split())
    passwd = (out / "passwd").read_text()
    assert "0c0c0c01:" not in passwd and "0c0c0c02:" in passwd and "collector" not in passwd
    assert "decommissioned" in runner.invoke(app, ["registry", "show", "0c0c0c01"]).output

    old_line = next(line for line in passwd.splitlines() if line.startswith("0c0c0c02:"))
    r = runner.invoke(app, ["registry", "rotate", "0c0c0c02"])
    assert r.exit_code == 0 and "credential 2" in r.output
    assert old_line not in (out / "passwd").read_text()
    assert runner.invoke(app, ["registry", "rotate", "0c0c0c01"]).exit_code == 1
    assert "not in the registry" in runner.invoke(app, ["registry", "show", "ffffffff"]).output
    assert runner.invoke(app, ["registry", "rotate", "NOT-HEX"]).exit_code == 1

    r = runner.invoke(app, ["broker-config", "--out", str(out), "--host", "mqtt.city.example", "--state-dir", str(depot)])
    assert "kept the CA" in r.output and (out / "ca.pem").read_bytes() == ca_before


def _group_of_user(name: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(name).pw_gid
    except KeyError:
        return None


def test_flash_without_image_or_port() -> None:
    r = runner.invoke(app, ["flash"])
    assert r.exit_code == 2 and "micropython.org/download" in r.output


def test_port_choice() -> None:
    assert choose("/dev/ttyUSB3", []) == "/dev/ttyUSB3"
    assert choose(None, [Candidate("/dev/ttyUSB0", "CP2102")]) == "/dev/ttyUSB0"
    with pytest.raises(PortError, match="no USB serial port found"):
        choose(None, [])
    with pytest.raises(PortError, match=r"several USB serial ports(.|\n)*/dev/ttyUSB0  \(CP2102\)(.|\n)*/dev/ttyACM0"):
        choose(None, [Candidate("/dev/ttyUSB0", "CP2102"), Candidate("/dev/ttyACM0", "USB JTAG")])


def test_messages_with_brackets_survive_rich_markup(depot: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERBSIDE_CONFIG", "")
    r = runner.invoke(app, ["provision", "--port", "/dev/null", "--kit", "air", "--site", "x"])
    assert r.exit_code == 2 and "set [node] broker_host in the settings or pass --broker-host" in r.output
