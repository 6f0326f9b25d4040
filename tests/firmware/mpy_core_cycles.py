# Runs inside the MicroPython VM (64 KB heap): the node's core logic for CYCLES
# reading intervals, with reboots, outages and a full buffer along the way.
# Prints one line "KS_CORE {json}" that the test asserts on.
# Everything after the "top level" marker runs at the VM's top level (it allows
# await there); the CPython half of the test wraps it in a coroutine.
import asyncio
import gc
import json

from knode import aggregate, backoff, batch, ringbuf, wire

DEV = b"\x00\xc0\xff\xee"


class Rand:
    def __init__(self):
        self.x = 12345

    def __call__(self, n):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return self.x & ((1 << n) - 1)


class Core:
    """The node's core for one reading interval per step(), with its state across steps."""

    def __init__(self):
        self.rand = Rand()
        self.store = ringbuf.Store("/buf", 7 * 4096)
        self.agg = aggregate.Mean(8)
        self.traffic = aggregate.Traffic()
        self.bo = backoff.Backoff(self.rand, 1000, 300000)
        self.sample = [0] * 8
        self.t = 1767225600
        self.st = {"sent": 0, "order_ok": True, "max_bytes": 0, "bytes": 0, "reopens": 0, "bo_max": 0,
                   "bo_min": 10 ** 9, "restored_ok": True}
        self.expected_seq = self.store.head

    def step(self, cycle):
        st, store, sample, agg, traffic, bo = self.st, self.store, self.sample, self.agg, self.traffic, self.bo
        for k in range(6):
            for i in range(8):
                sample[i] = (cycle * 7 + k * 3 + i * 11) % 200 + (3000 if i == 5 else 0)
            if cycle % 5 == 0:
                sample[6] = None
            agg.add(sample)
        traffic.sampled()
        traffic.vehicle(cycle & 1, 30 + cycle % 90, 300 + cycle % 200)
        traffic.take()
        samples, values = agg.take()
        store.append(self.t, cycle % 3000 > 20, 60, 6, samples, values)
        self.t += 60
        online = (cycle // 500) % 4 != 3  # 500 of every 2000 cycles without network: backlog, then drops
        if not online:
            d = bo.next_ms()
            st["bo_max"] = max(st["bo_max"], d)
            st["bo_min"] = min(st["bo_min"], d)
        elif len(store) and (cycle % 10 == 0 or len(store) > 60):
            bo.reset()
            recs = store.peek(batch.MAX_BATCH)
            n = batch.first_run(recs)
            payload = batch.encode_run(DEV, wire.KIT_AIR, recs, n)
            if recs[0][0] < self.expected_seq:
                st["order_ok"] = False
            self.expected_seq = recs[n - 1][0] + 1
            st["bytes"] += len(payload)
            st["sent"] += n
            st["max_bytes"] = max(st["max_bytes"], len(payload))
            store.ack(recs[n - 1][0])
        if cycle % 1000 == 999:  # a reboot: the state must come back from flash alone
            before = (store.next_seq, store.head, store.drops, store.boot + 1)
            self.store = ringbuf.Store("/buf", 7 * 4096)
            s = self.store
            if (s.next_seq, s.head, s.drops, s.boot) != before:
                st["restored_ok"] = False
            st["reopens"] += 1

    async def run(self, first, last):
        for cycle in range(first, last):
            self.step(cycle)
            await asyncio.sleep(0)  # the sampler yields between intervals

    def result(self, cycles, heap, control):
        s = self.store
        self.st.update({"cycles": cycles, "seq": s.next_seq, "drops": s.drops, "buffered": len(s), "boot": s.boot,
                        "heap": heap, "control": control})
        return self.st


async def idle():
    await asyncio.sleep(0)


def live_heap():
    gc.collect()
    return gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0


CYCLES = 10000  # the test substitutes its own count
CHUNK = 100
# --- top level ---
# The VM only reclaims garbage in a collection made at the top level after an await (a collection
# inside a running task keeps it), so the core runs in tasks of CHUNK intervals and the live heap is
# sampled between them. Each top-level await itself keeps a few bytes in this VM: `control` measures
# that with idle tasks, so the test can tell it from a leak in the firmware.
await asyncio.create_task(idle())  # noqa: F704 - the first collection that works follows an await
c0 = live_heap()
for _ in range(CYCLES // CHUNK):
    await asyncio.create_task(idle())  # noqa: F704 - the VM runs scripts with top-level await
control = live_heap() - c0
core = Core()
heap = []
for first in range(0, CYCLES, CHUNK):
    await asyncio.create_task(core.run(first, first + CHUNK))  # noqa: F704
    heap.append(live_heap())
print("KS_CORE " + json.dumps(core.result(CYCLES, heap, control)))
