"""The self-test the provisioning tool runs over the raw REPL: one parsable line, never an exception.

Every output here also goes through provisioning's own parser (kerbside.provisioning.selftest.parse), so
the two ends of that line are tested against each other with the real firmware, not a stand-in.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from kerbside.devstack import free_port
from kerbside.provisioning import selftest as provisioning
from knode import selftest

from .conftest import node_config

NAMES = ["config", "sensors", "wifi", "broker", "publish"]


def _line(out: str) -> dict:
    lines = [x for x in out.splitlines() if x.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("KS_SELFTEST ")
    doc = json.loads(lines[0][len("KS_SELFTEST "):])
    assert [c["name"] for c in doc["checks"]] == NAMES
    assert all(isinstance(c["ok"], bool) and isinstance(c["detail"], str) for c in doc["checks"])
    return doc


def _checks(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["checks"]}


def _parsed(out: str) -> provisioning.SelfTest:
    """The real output as the provisioning tool reads it: the same checks, in the order it expects."""
    st = provisioning.parse(out)
    doc = _line(out)
    assert [(c.name, c.ok, c.detail) for c in st.checks] == [(c["name"], c["ok"], c["detail"]) for c in doc["checks"]]
    assert [c.name for c in st.checks] == list(provisioning.EXPECTED_CHECKS)
    assert st.ok is doc["ok"]
    return st


def test_provisioning_expects_the_checks_the_firmware_runs() -> None:
    assert provisioning.EXPECTED_CHECKS == selftest.NAMES
    assert provisioning.RUN == "from knode import selftest\nselftest.run()\n"


@pytest.mark.mpy
def test_selftest_in_the_micropython_vm_reports_no_hardware(micropython, tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(node_config()))
    r = micropython.run(provisioning.RUN, files={"/config.json": cfg}).check()
    doc = _line(r.stdout)
    st = _parsed(r.stdout)
    assert not st.ok and [c.name for c in st.failed] == ["sensors", "wifi", "broker", "publish"]
    c = _checks(doc)
    assert doc["ok"] is False
    assert c["config"]["ok"] is True and "00c0ffee" in c["config"]["detail"]
    for n in ("sensors", "wifi", "broker", "publish"):
        assert c[n] == {"name": n, "ok": False, "detail": "no hardware"}
    assert not r.heap_grew


@pytest.mark.mpy
def test_selftest_names_a_broken_config_in_the_vm(micropython, tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text('{"v": 1, "device": "00c0ffee", "kit": "air",')
    out = micropython.run(provisioning.RUN, files={"/config.json": cfg}).check().stdout
    doc = _line(out)
    assert [c.name for c in _parsed(out).failed] == list(provisioning.EXPECTED_CHECKS)
    assert _checks(doc)["config"] == {"name": "config", "ok": False, "detail": "/config.json: not valid JSON"}


def test_selftest_without_config_or_hardware_on_cpython(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from knode import hal

    assert selftest.run(hal.Board(str(tmp_path))) is False
    out = capsys.readouterr().out
    assert not _parsed(out).ok
    c = _checks(_line(out))
    assert c["config"]["ok"] is False and "not found" in c["config"]["detail"]
    assert c["wifi"]["detail"] == "no hardware"


@pytest.mark.services
def test_selftest_passes_on_simulated_hardware_and_publishes_retained_status(
        mosquitto, make_board, capsys: pytest.CaptureFixture[str]) -> None:
    board = make_board(node_config(device="5e1f7e57", port=mosquitto.port))
    t0 = time.monotonic()
    assert selftest.run(board) is True
    assert time.monotonic() - t0 < 60
    out = capsys.readouterr().out
    doc = _line(out)
    assert doc["ok"] is True, doc
    st = _parsed(out)
    assert st.ok and st.failed == []
    assert "pm" in _checks(doc)["sensors"]["detail"]
    got: list[bytes] = []
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("kerbside/v1/5e1f7e57/status", 1)
    sub.loop_start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    sub.loop_stop()
    sub.disconnect()
    from kerbside.collector.decode import decode

    d = decode("kerbside/v1/5e1f7e57/status", got[0], time.time())
    assert d.online is True and d.device == "5e1f7e57"


def test_selftest_reports_an_unreachable_broker_within_bounds(make_board, capsys: pytest.CaptureFixture[str]) -> None:
    board = make_board(node_config(port=free_port()))  # nothing listens there
    assert selftest.run(board, broker_s=2) is False
    out = capsys.readouterr().out
    assert [c.name for c in _parsed(out).failed] == ["broker", "publish"]
    c = _checks(_line(out))
    assert c["wifi"]["ok"] is True
    assert c["broker"]["ok"] is False and c["broker"]["detail"]
    assert c["publish"] == {"name": "publish", "ok": False, "detail": "needs the broker"}


@pytest.mark.services
def test_selftest_reports_a_broken_sensor(mosquitto, make_board, capsys: pytest.CaptureFixture[str]) -> None:
    from kerbside.simulator.hardware import Faults

    board = make_board(node_config(port=mosquitto.port), faults=Faults(broken_sensor=True))
    assert selftest.run(board) is False
    out = capsys.readouterr().out
    assert [c.name for c in _parsed(out).failed] == ["sensors"]
    c = _checks(_line(out))
    assert c["sensors"]["ok"] is False and "failed: pm" in c["sensors"]["detail"]
    assert c["publish"]["ok"] is True
