"""Run code under the real MicroPython VM (the npm WebAssembly port, by node).

Tests and benchmarks use this to hold firmware to the same heap an ESP32
without PSRAM has. See run.mjs for how heap overruns are detected.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FIRMWARE_LIB = ROOT / "firmware" / "knode"
ESP32_HEAP = 65536
"""Smallest free heap we plan for on an ESP32 without PSRAM (issue: 64-100 KB)."""


class VMMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class Result:
    status: int
    stdout: str
    stderr: str
    heap_total: int
    heap_used: int
    heap_limit: int
    """GC heap at start: the requested heap less what the port reserves."""

    @property
    def heap_grew(self) -> bool:
        """True if the VM had to grow its heap past the limit.

        Only meaningful for scripts that allocate little: this port reclaims garbage only in a collection
        made at the top level after an await (one inside a running task or before the first await keeps
        it), so an allocation-heavy loop grows the heap without using it. For those, sample gc.mem_alloc()
        after gc.collect() at the top level between tasks, as tests/firmware/mpy_core_cycles.py does.
        """
        return self.heap_total > self.heap_limit

    def check(self) -> Result:
        if self.status != 0:
            raise AssertionError(f"MicroPython failed ({self.status}):\n{self.stderr}\n{self.stdout}")
        return self


def available() -> bool:
    return shutil.which("node") is not None and (HERE / "node_modules" / "@micropython").is_dir()


def run(code: str, heap: int = ESP32_HEAP, libs: tuple[Path, ...] = (FIRMWARE_LIB,),
        files: dict[str, Path] | None = None, timeout: float = 300) -> Result:
    """Run code (a script's text) with each lib copied to /lib/<name> in the VM."""
    if not available():
        raise VMMissing("MicroPython VM missing: run `make test` (python3 tests/mpy/install.py)")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
        script = f.name
    args = ["node", str(HERE / "run.mjs"), "--heap", str(heap)]
    for lib in libs:
        args += ["--lib", str(lib)]
    for vm_path, host in (files or {}).items():
        args += ["--file", f"{host}={vm_path}"]
    try:
        p = subprocess.run([*args, script], capture_output=True, text=True, timeout=timeout, cwd=HERE)
    finally:
        Path(script).unlink()
    m = re.search(r"KS_HEAP initial=(-?\d+) total=(-?\d+) used=(-?\d+)", p.stderr)
    initial, total, used = (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else (-1, -1, -1)
    stderr = re.sub(r"KS_HEAP .*\n?", "", p.stderr)
    return Result(p.returncode, p.stdout, stderr, total, used, initial)
