# Runs inside the MicroPython VM: one boot of the whole, unmodified node (knode.node.Node) on the
# VM board (vmboard.py), from power-on until a power cut, a reset, or the end of the run and the
# drain after it. /run.json says when; the last line is "KS_NODE {json}" for the test.
#   on_us, end_us, cut_us (or null): simulated instants; speedup; kit; root (the flash);
#   faults: [[from_us, to_us, "down"|"wifi"|"stall"], ...]; drain_s: real seconds to empty the buffer.
import gc
import json

with open("/run.json") as f:
    P = json.load(f)
gc.collect()
heap0 = gc.mem_alloc()  # the VM itself
import asyncio
import sys
import time

import jsnet


async def live():
    """Live heap: this port frees garbage (here: what imports leave behind) only in a collection made
    at the top level after an await, so every figure is taken after one."""
    await asyncio.sleep_ms(0)
    gc.collect()
    return gc.mem_alloc()


heap_a = await live()  # noqa: F704 - the VM runs this at the top level
# The board's fake sensors use the drivers' constants, so importing vmboard loads drivers: those this
# kit's node uses are loaded first and counted as the node's code, not the board's.
if P["kit"] == "air":
    from knode.drivers import pms, sensirion  # noqa: F401
else:
    from knode.drivers import detector  # noqa: F401
from knode import crc  # noqa: F401 - the store's, on both kits
heap_d = await live()  # noqa: F704
import vmboard

heap1 = await live()  # noqa: F704 - + asyncio and the VM board (what machine/network are on a device)
from knode import node

heap2 = await live()  # noqa: F704 - + the firmware's bytecode (in flash on a frozen or ROMFS build)
drivers = heap_d - heap_a
US = vmboard.US
clock = vmboard.VClock(P["on_us"], P["speedup"])
board = vmboard.VMBoard(P["root"], clock, P["kit"])
done = asyncio.Event()
R = {"reason": None, "ended_at": None}


def finish(reason):
    if R["reason"] is None:
        R["reason"] = reason
        done.set()


def end():
    n.stop_sampling()  # the interval under way is never stored; the link drains what is on flash
    for f in P["faults"]:
        jsnet.fault(f[2], 0)
    R["ended_at"] = time.ticks_ms()


def wdt_check():
    w = board.wdt
    if w is not None and clock.now - w.fed > w.timeout_us:
        finish("watchdog")
        return
    clock.at(clock.now + 10 * US, wdt_check)


board.on_reset = finish
n = node.Node(board)
for f in P["faults"]:
    if f[0] < P["end_us"]:
        clock.at(f[0], lambda k=f[2]: jsnet.fault(k, 1))
        clock.at(min(f[1], P["end_us"]), lambda k=f[2]: jsnet.fault(k, 0))
if P.get("cut_us"):
    clock.at(P["cut_us"], lambda: finish("power cut"))
if P["end_us"] <= P["on_us"]:
    end()
else:
    clock.at(P["end_us"], end)
clock.at(P["on_us"] + 10 * US, wdt_check)
n.start()
driver = asyncio.create_task(clock.drive())
peak = 0
at_peak = []
while not done.is_set():
    await asyncio.sleep_ms(40)  # noqa: F704 - the VM runs this at the top level
    jsnet.gc()  # JS drops the Python callbacks of settled promises...
    await asyncio.sleep_ms(0)  # noqa: F704 - ...its finalizers run...
    gc.collect()  # at the top level after an await: the only place this port frees garbage
    a = gc.mem_alloc()
    if a > peak:
        peak = a
        at_peak = [m for m in sys.modules if m.startswith("knode")]
        at_peak.append("buffered=%d cmds=%d connected=%s" % (len(n.store), len(n.cmds), n.client is not None))
    for i, t in enumerate(n.tasks):
        if t.done() and (i or R["ended_at"] is None):  # the sampler ends at the end of the run
            finish("task %d ended" % i)
    if R["ended_at"] is not None:
        if not len(n.store):
            finish("drained")
        elif time.ticks_diff(time.ticks_ms(), R["ended_at"]) > P["drain_s"] * 1000:
            finish("drain timeout")
out = {"reason": R["reason"], "produced": n.produced, "sent": n.sent, "buffered": len(n.store),
       "drops": n.store.drops, "boot": n.store.boot, "next_seq": n.store.next_seq, "synced": n.synced,
       "last_err": n.last_err, "peak_heap": peak, "heap_vm": heap0, "heap_board": heap1 - heap0 - drivers,
       "heap_code": heap2 - heap1 + drivers, "peak_node": peak - heap1 + drivers, "instants": clock.instants,
       "now_us": clock.now, "wdt_feeds": board.wdt.feeds if board.wdt else 0, "open_sockets": jsnet.open_count(),
       "net": json.loads(jsnet.stats()), "cmds_done": getattr(n, "cmds_done", 0), "at_peak": at_peak,
       "broker": n.broker}
print("KS_NODE " + json.dumps(out))
