"""Firmware type-checked against micropython-esp32-stubs: calls that do not exist on an ESP32 fail here.

The stdlib is MicroPython's (micropython-stdlib-stubs as the typeshed), and
machine/network/ntptime/time come from the ESP32 stubs, so e.g. time.monotonic
(CPython only) or SSLContext.verify_mode (absent on MicroPython) are errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.services  # mypy runs as a subprocess

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(sysconfig.get_paths()["purelib"])
IGNORED = ("var-annotated", "assignment")  # inference noise, not API misuse


@pytest.fixture(scope="module")
def esp32_stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the ESP32 stub files on MYPYPATH (all of site-packages would shadow real packages)."""
    records = list(SITE.glob("micropython_esp32_stubs-*.dist-info/RECORD"))
    if not records:
        pytest.fail("micropython-esp32-stubs missing: `make test` installs the dev extras")
    out = tmp_path_factory.mktemp("esp32-stubs")
    for line in records[0].read_text().splitlines():
        rel = line.split(",")[0]
        if rel.endswith(".pyi"):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).symlink_to(SITE / rel)
    (out / "_mpy_shed").symlink_to(SITE / "_mpy_shed")
    return out


def _mypy(stubs: Path, cache: Path, *targets: str) -> list[str]:
    args = [sys.executable, "-m", "mypy", "--custom-typeshed-dir", str(SITE), "--check-untyped-defs",
            "--no-error-summary", "--cache-dir", str(cache), "--show-error-codes"]
    for code in IGNORED:
        args += ["--disable-error-code", code]
    env = {**os.environ, "MYPYPATH": f"{ROOT / 'firmware'}{os.pathsep}{stubs}"}
    p = subprocess.run([*args, *targets], capture_output=True, text=True, cwd=ROOT, env=env)
    # the stubs themselves have a few internal inconsistencies: judge only our files
    return [ln for ln in p.stdout.splitlines() if not ln.startswith(str(stubs)) and ": error:" in ln]


def test_firmware_uses_only_what_the_esp32_has(esp32_stubs: Path, tmp_path: Path) -> None:
    errors = _mypy(esp32_stubs, tmp_path / "cache", "-p", "knode", str(ROOT / "firmware" / "main.py"),
                   str(ROOT / "firmware" / "boot.py"))
    assert errors == []


def test_the_check_catches_a_call_the_esp32_lacks(esp32_stubs: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad_fw.py"
    bad.write_text("import machine\nimport time\n\n\ndef f():\n    u = machine.UART(1, baudrate=9600)\n"
                   "    u.read_uv()\n    return time.monotonic()\n")
    errors = _mypy(esp32_stubs, tmp_path / "cache", str(bad))
    assert any('"UART" has no attribute "read_uv"' in e for e in errors), errors
    assert any('has no attribute "monotonic"' in e for e in errors), errors
