"""The node's core logic under the real MicroPython VM with an ESP32-sized heap, and the same on CPython.

aggregation -> ring buffer on (RAM) flash with reboots, outages and a full
buffer -> batching into contract messages -> acknowledgement; plus backoff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = (HERE / "mpy_core_cycles.py").read_text()
CYCLES = 10_000


def _result(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("KS_CORE ")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0][len("KS_CORE "):])


def _check(r: dict) -> None:
    assert r["cycles"] == CYCLES and r["seq"] == CYCLES
    assert r["sent"] + r["drops"] + r["buffered"] == CYCLES, "every reading is sent, buffered or counted as dropped"
    assert r["drops"] > 0, "the 500-interval outages overflow the 320-reading buffer"
    assert r["order_ok"] and r["restored_ok"]
    assert r["reopens"] == 10 and r["boot"] == 11
    assert 1000 <= r["bo_min"] and r["bo_max"] <= 300000 and r["bo_max"] > 100000
    assert r["max_bytes"] <= 8192


@pytest.mark.mpy
def test_core_runs_10k_cycles_in_64k_heap_like_on_cpython(micropython, tmp_path: Path) -> None:
    code = SCRIPT.replace("CYCLES = 10000", f"CYCLES = {CYCLES}")
    vm_result = micropython.run(code, heap=micropython.ESP32_HEAP).check()
    got = _result(vm_result.stdout)
    _check(got)
    # Live heap after a collection, every 100 intervals: the high-water of live data fits an ESP32's heap
    # with room for the network stack, and 9000 intervals after warm-up (9 reboots, outages, a full
    # buffer) leave no more live data than the VM itself keeps for the same number of awaits (control).
    heap, control = got.pop("heap"), got.pop("control")
    assert len(heap) == CYCLES // 100
    assert max(heap) <= 40 * 1024, f"live heap high-water {max(heap)} B"
    growth = heap[-1] - heap[10]
    assert 0 <= control < 8 * 1024, f"VM control {control} B"
    assert growth <= control + 1024, f"live heap grew {growth} B over 9000 intervals (VM control: {control} B)"
    # CPython runs the very same script against a real directory: identical results
    script = tmp_path / "core.py"
    marker = "# --- top level ---\n"
    cpython = code.replace('"/buf"', repr(str(tmp_path / "buf")))
    head, top = cpython.split(marker)
    cpython = head + "async def _top():\n" + "".join("    " + ln + "\n" for ln in top.splitlines()) + "asyncio.run(_top())\n"
    script.write_text(cpython)
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1] / "firmware")}
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    cp = _result(p.stdout)
    assert set(cp.pop("heap")) == {0} and cp.pop("control") == 0, "CPython has no gc.mem_alloc"
    assert cp == got
    print(f"live heap: high-water {max(heap)} B, after warm-up {heap[10]} B, at the end {heap[-1]} B, "
          f"VM control {control} B")
