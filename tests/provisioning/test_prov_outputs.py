"""What provisioning leaves besides the node: a label whose QR decodes back to the node, and a row per node."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_prov_cli import depot, runner, wide_console  # noqa: F401  (fixtures)

from kerbside.cli import app
from kerbside.core.registry import Registry
from kerbside.devstack import require
from kerbside.provisioning import bundle, label
from kerbside.provisioning.report import COLUMNS, firmware_hash


def zbar(png: Path) -> list[str]:
    """The QR codes in an image, read by zbar (an independent decoder, not the encoder's own matrix)."""
    r = subprocess.run([require("zbarimg", "zbar-tools"), "--raw", "-q", "-Sdisable", "-Sqrcode.enable", str(png)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_the_payload_round_trips_any_site() -> None:
    for site in ("Ringstrasse 12", "Brücke Süd, pole 4 & 5", "a?b=c#d", ""):
        assert label.parse(label.payload("00c0ffee", site)) == ("00c0ffee", site)
    with pytest.raises(ValueError, match="not a kerbside label"):
        label.parse("https://example.org/00c0ffee")


@pytest.mark.services
def test_the_label_png_decodes_back_to_the_node_id_and_site(tmp_path: Path) -> None:
    site = "Ringstrasse 12, north lamp post by the tram stop Schottentor (Brücke Süd)"
    png = label.write(tmp_path, "00c0ffee", "air", site, "lez-inner")
    assert png == tmp_path / "00c0ffee.png"
    img = Image.open(png)
    assert img.size == (732, 343) and img.info["dpi"] == pytest.approx((300, 300), abs=0.1)  # 62 x 29 mm at 300 dpi
    assert [label.parse(text) for text in zbar(png)] == [("00c0ffee", site)]


@pytest.mark.services
def test_provision_writes_the_label_and_appends_a_row_per_run(board, depot: Path, standin_dir: Path) -> None:  # noqa: F811
    labels, log = depot / "labels", depot / "depot-log.csv"
    args = ["provision", "--port", board.port, "--kit", "traffic", "--site", "Brücke Süd", "--zone", "control",
            "--firmware-dir", str(standin_dir), "--label", str(labels), "--report", str(log)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    device = next(iter(Registry(depot / "registry.json").load()))
    assert f"label: {labels / (device + '.png')}" in first.output and f"Recorded in {log}" in first.output
    assert [label.parse(t) for t in zbar(labels / f"{device}.png")] == [(device, "Brücke Süd")]
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    with open(log, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert log.read_text().splitlines()[0] == ",".join(COLUMNS)
    fw = firmware_hash(bundle.build(standin_dir))
    for row, identity in zip(rows, ("new", "kept"), strict=True):
        assert {k: row[k] for k in ("port", "device", "identity", "kit", "site", "zone", "firmware", "config", "result",
                                    "check_config", "check_sensors", "check_wifi", "check_broker", "check_publish",
                                    "failed", "error")} == {
            "port": board.port, "device": device, "identity": identity, "kit": "traffic", "site": "Brücke Süd",
            "zone": "control", "firmware": fw, "config": "1", "result": "pass", "check_config": "pass",
            "check_sensors": "pass", "check_wifi": "pass", "check_broker": "pass", "check_publish": "pass",
            "failed": "", "error": ""}
        assert 0 < float(row["seconds"]) < 300


@pytest.mark.services
def test_a_failed_node_gets_its_row_with_the_checks_as_json_lines(board, depot: Path) -> None:  # noqa: F811
    """The shipped self-test on a board without radio or sensors: config passes, the rest fails."""
    log = depot / "depot-log.jsonl"
    r = runner.invoke(app, ["provision", "-p", board.port, "--kit", "air", "--site", "Depot bench", "--report", str(log)])
    assert r.exit_code == 1, r.output
    [row] = [json.loads(line) for line in log.read_text().splitlines()]
    assert (row["identity"], row["result"], row["config"]) == ("new", "fail", 1)
    assert row["checks"] == {"config": "pass", "sensors": "fail", "wifi": "fail", "broker": "fail", "publish": "fail"}
    assert row["failed"].count("no hardware") == 4
    bad = runner.invoke(app, ["provision", "-p", "/dev/ttyUSB-unplugged", "--kit", "air", "--site", "Bench B",
                              "--report", str(log)])
    assert bad.exit_code == 1
    row = json.loads(log.read_text().splitlines()[1])
    assert (row["device"], row["result"], row["port"]) == ("", "error", "/dev/ttyUSB-unplugged")
    assert "ttyUSB-unplugged" in row["error"]


def test_a_report_with_other_columns_is_refused_before_any_node_is_touched(depot: Path) -> None:  # noqa: F811
    log = depot / "theirs.csv"
    log.write_text("date,serial\n2026-01-01,x\n")
    r = runner.invoke(app, ["provision", "-p", "/dev/ttyUSB-unplugged", "--kit", "air", "--site", "Bench", "--report",
                            str(log)])
    assert r.exit_code == 2 and "has other columns" in r.output
    assert log.read_text() == "date,serial\n2026-01-01,x\n"
    assert not (depot / "registry.json").exists()
