# Runs inside the MicroPython VM (64 KB heap): the node's core logic for CYCLES
# reading intervals, with reboots, outages and a full buffer along the way.
# Prints one line "KS_CORE {json}" that the test asserts on.
# The loop runs as an asyncio task that yields once per interval, as the
# node's sampler does (awaiting at the top level instead leaks in this VM).
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


async def main(cycles):
    rand = Rand()
    store = ringbuf.Store("/buf", max_records=320)
    agg = aggregate.Mean(8)
    traffic = aggregate.Traffic()
    bo = backoff.Backoff(rand, 1000, 300000)
    sample = [0] * 8
    t = 1767225600
    st = {"sent": 0, "order_ok": True, "max_bytes": 0, "bytes": 0, "reopens": 0, "bo_max": 0, "bo_min": 10 ** 9,
          "restored_ok": True}
    expected_seq = store.head
    for cycle in range(cycles):
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
        store.append(t, cycle % 3000 > 20, 60, 6, samples, values)
        t += 60
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
            if recs[0][0] < expected_seq:
                st["order_ok"] = False
            expected_seq = recs[n - 1][0] + 1
            st["bytes"] += len(payload)
            st["sent"] += n
            st["max_bytes"] = max(st["max_bytes"], len(payload))
            store.ack(recs[n - 1][0])
            recs = payload = None
        if cycle % 1000 == 999:  # a reboot: the state must come back from flash alone
            before = (store.next_seq, store.head, store.drops, store.boot + 1)
            store = ringbuf.Store("/buf", max_records=320)
            if (store.next_seq, store.head, store.drops, store.boot) != before:
                st["restored_ok"] = False
            st["reopens"] += 1
        if cycle % 100 == 0:
            gc.collect()
        await asyncio.sleep(0)  # the sampler yields between intervals
    st.update({"cycles": cycles, "seq": store.next_seq, "drops": store.drops, "buffered": len(store),
               "boot": store.boot})
    return st


CYCLES = 10000  # the test substitutes its own count
task = asyncio.create_task(main(CYCLES))  # CPython: the test swaps this tail for asyncio.run()
print("KS_CORE " + json.dumps(await task))  # noqa: F704 - the VM runs scripts with top-level await
