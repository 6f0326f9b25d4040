# kerbside node firmware - the asyncio core shared by both kits.
#
# Three loops: the sampler (sensors -> per-interval reading -> flash ring
# buffer), the link (Wi-Fi, NTP, MQTT; drains the buffer oldest first, sends
# status and acks, runs commands) and the watchdog feeder. Sampling never
# waits on the network: the only thing between them is the ring buffer.
import asyncio

from knode import backoff, batch, commands, config, net, ringbuf, sensors, wire
from knode.hal import SYNCED_AFTER

FW = "0.1.0"
DRAIN_GAP_MS = 250    # pause between backlog messages: a bounded drain rate that leaves room for live data
RESYNC_S = 6 * 3600   # NTP again to correct drift
WDT_MS = 120000
CATCH_UP = 10         # intervals the sampler may lag and still produce each one (else a visible time gap)


class Node:
    def __init__(self, board, cfg=None):
        self.board = board
        self.cfg = cfg if cfg is not None else config.load(board.path(config.PATH))
        self.did = self.cfg["device"]
        self.dev = wire.device_bytes(self.cfg["device"])
        self.kitno = wire.KITS[self.cfg["kit"]]
        per_kb = 40  # bytes per stored reading, rounded up (docs/firmware.md)
        self.store = ringbuf.Store(board.path("/buf"), self.cfg.get("buffer_kb", 512) * 1024 // per_kb)
        self.kit = sensors.make(board, self.cfg)
        self.synced = board.time() > SYNCED_AFTER
        self.boot_t = board.time()
        self.synced_at = board.time() if self.synced else 0
        self.client = None
        self.cmds = []
        self.wake = asyncio.Event()
        self.status_due = True
        self.last_status = 0
        self.last_state = None
        self.sent = 0
        self.produced = 0
        self.last_err = ""
        self.alive_t = board.time()
        self.reboot_requested = False
        self.healthy = False
        self.sampling = True
        self.tasks = []

    # -- sampling ------------------------------------------------------------
    async def sleep_until(self, t):
        d = t * 1000 - self.board.time_ms()
        if d > 0:
            await self.board.sleep_ms(d)

    async def sampler(self):
        b = self.board
        start = None
        last = None
        while self.sampling:
            period = self.cfg["period"]
            sample = self.cfg["sample"]
            expected = period // sample
            now = b.time()
            synced = self.synced
            if (start is None or last != (period, synced) or now - start > CATCH_UP * period
                    or now < start):
                start = now - now % period  # (re)align: first interval, new period, clock set or far behind
            else:
                start += period  # late by a little: still one reading per interval, none skipped
            last = (period, synced)
            for k in range(expected):
                await self.sleep_until(start + k * sample)
                if self.synced != synced:
                    break  # the clock was just set (NTP): close this interval, re-stamped when sent
                await self.kit.sample()
                self.alive_t = b.time()
            if self.synced == synced:
                await self.sleep_until(start + period)
            samples, values = self.kit.take()
            if not self.sampling:
                break  # stopped mid-interval: a partial reading would look like a bad capture
            self.store.append(start, synced, period, expected, samples, values)
            self.produced += 1
            self.wake.set()

    # -- clock ---------------------------------------------------------------
    def sync_clock(self):
        b = self.board
        for host in self.cfg["ntp"]:
            before = b.time()
            try:
                ok = b.ntp_sync(host)
            except Exception:
                ok = False
            if ok:
                offset = b.time() - before
                if not self.synced:
                    self.store.set_offset(offset)
                    self.boot_t += offset
                    self.synced = True
                self.synced_at = b.time()
                return True
        return False

    # -- status --------------------------------------------------------------
    def status(self):
        b = self.board
        return {"v": 1, "id": self.dev, "online": True, "t": b.time(), "synced": self.synced, "fw": FW,
                "kit": self.kitno, "up": max(0, b.time() - self.boot_t), "heap": b.free_heap(), "rssi": net.rssi(b),
                "buf": len(self.store), "drop": self.store.drops, "boot": self.store.boot, "seq": self.store.next_seq,
                "cfg": self.cfg["cfg"], "health": self.kit.health()}

    def _state(self):
        return (self.synced, self.store.drops, self.cfg["cfg"])

    async def send_status(self, client):
        await client.publish(wire.topic(self.did, "status"), wire.encode_status(self.status()), 1, True)
        self.last_status = self.board.time()
        self.last_state = self._state()
        self.status_due = False
        if not self.healthy:
            self.healthy = True
            from knode import ota
            ota.healthy(self.board)  # an update that got this far is kept

    # -- link ----------------------------------------------------------------
    def on_message(self, topic, payload):
        if len(self.cmds) < 8:  # a flood of commands must not exhaust the heap
            self.cmds.append(payload)
        self.wake.set()

    async def link(self):
        b = self.board
        bo = backoff.Backoff(b.randbits, 1000, 300000)
        m = self.cfg["mqtt"]
        while True:
            client = None
            try:
                if not await net.join_wifi(b, self.cfg):
                    raise OSError("no Wi-Fi")
                if not self.synced or b.time() - self.synced_at > RESYNC_S:
                    self.sync_clock()
                client = net.client_for(b, self.cfg, self.on_message)
                await client.connect(m["host"], m["port"])
                await client.subscribe(wire.topic(self.did, "cmd"), 1)
                self.client = client
                bo.reset()
                self.status_due = True
                await self.pump(client)
            except Exception as e:
                self.last_err = "%s: %s" % (type(e).__name__, e)
            self.client = None
            if client is not None:
                client.close()
            if self.reboot_requested:
                b.reset()
            await b.sleep_ms(bo.next_ms())

    async def pump(self, client):
        b = self.board
        while client.connected:
            while self.cmds:
                await commands.handle(self, client, self.cmds.pop(0))
                if self.reboot_requested:
                    will = net.last_will(self.cfg)  # a clean goodbye suppresses the Will: say offline ourselves
                    await client.publish(will[0], will[1], 1, True)
                    await client.disconnect()
                    return
            if (self.status_due or self.last_state != self._state()
                    or b.time() - self.last_status >= self.cfg["status_every"]):
                await self.send_status(client)
            if not self.synced and b.time() - self.synced_at > 60:
                self.synced_at = b.time()  # retry NTP about once a minute until it works
                self.sync_clock()
            if len(self.store):
                recs = self.store.peek(batch.MAX_BATCH)
                n = batch.first_run(recs)
                await client.publish(wire.topic(self.did, "readings"), batch.encode_run(self.dev, self.kitno, recs, n), 1)
                self.store.ack(recs[n - 1][ringbuf.SEQ])
                self.sent += n
                recs = None
                if len(self.store):
                    await b.sleep_ms(DRAIN_GAP_MS)
                    continue
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), 5)
            except asyncio.TimeoutError:
                pass

    # -- watchdog ------------------------------------------------------------
    async def watchdog(self):
        wdt = self.board.watchdog(WDT_MS)
        limit = 2 * self.cfg["sample"] + 90
        while True:
            if wdt is not None and self.board.time() - self.alive_t < limit:
                wdt.feed()  # only while sampling makes progress: a hung sampler resets the node
            await self.board.sleep_ms(WDT_MS // 4)

    def start(self):
        self.tasks = [asyncio.create_task(self.sampler()), asyncio.create_task(self.link()),
                      asyncio.create_task(self.watchdog())]

    async def run(self):
        """Until a task fails (a bug, or reset() in the simulator): then the watchdog or main.py reboots."""
        self.start()
        try:
            await asyncio.gather(*self.tasks)
        finally:
            self.stop()

    def stop_sampling(self):
        """Finish without new readings while the link keeps draining (the simulator's end of run)."""
        self.sampling = False

    def stop(self):
        for t in self.tasks:
            t.cancel()
        if self.client is not None:
            self.client.close()

