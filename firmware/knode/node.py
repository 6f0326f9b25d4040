# kerbside node firmware - the asyncio core shared by both kits.
#
# Three loops: the sampler (sensors -> per-interval reading -> flash ring
# buffer), the link (Wi-Fi, NTP, MQTT; drains the buffer oldest first, sends
# status and acks, runs commands) and the watchdog feeder. Sampling never
# waits on the network: the only thing between them is the ring buffer.
import asyncio
import sys

from knode import backoff, batch, net, ringbuf, sensors, wire
from knode.hal import MIN_MICROPYTHON, unload

FW = "0.2.0"
DRAIN_GAP_MS = 250    # pause between backlog messages: a bounded drain rate that leaves room for live data
RESYNC_S = 6 * 3600   # NTP again to correct drift
NTP_RETRY_S = 60      # until the first answer
NTP_RATE_S = 3600     # after a kiss-of-death RATE
MAX_STEP_MS = 600000  # a synced clock is not moved by more than this on one answer (a lying server)
WDT_MS = 120000
LINK_STALL_S = 1200   # the link makes progress at least this often, or the watchdog resets the node:
#                       every wait in it is bounded (Wi-Fi 20 s per network, broker 10 s, backoff <= 5 min)
STABLE_S = 60         # a connection that lasted this long resets the reconnect backoff
#                       mqtt.brokers (a cluster's nodes) are tried in turn: a failed or lost connection
#                       moves to the next, after the same backoff; readings not PUBACKed stay in the store
CATCH_UP = 10         # intervals the sampler may lag and still produce each one (else a visible time gap)
MAX_CMDS = 4          # commands taken at once; more stay with the broker until the queue is empty


class Node:
    def __init__(self, board, cfg=None):
        impl = sys.implementation
        if impl.name == "micropython" and impl.version < MIN_MICROPYTHON:
            raise RuntimeError("knode needs MicroPython %d.%d or newer" % MIN_MICROPYTHON[:2])
        self.board = board
        if cfg is None:
            from knode import config
            cfg = config.load(board.path(config.PATH))
            unload("config")  # loaded again by the commands that change the config
        self.cfg = cfg
        self.did = self.cfg["device"]
        self.dev = wire.device_bytes(self.cfg["device"])
        self.kitno = wire.KITS[self.cfg["kit"]]
        self.store = ringbuf.Store(board.path("/buf"), self.cfg["buffer_kb"] * 1024)
        self.kit = sensors.make(board, self.cfg)
        self._clock_floor()
        self.synced = False  # only NTP says so, whatever the RTC shows after a warm reset
        self.jump = 0  # seconds the clock moved when NTP first set it this boot
        self.boot_t = board.time()
        self.synced_at = 0
        self.ntp_next = 0
        self.ntp_banned = []
        self.ntp_err = ""
        self.client = None
        self.broker = 0  # index into mqtt.brokers of the broker the link uses (or will try next)
        self.cmds = []  # (payload or None if too large, packet id)
        self.cmds_done = 0
        self.refused = False  # a command was left with the broker: reconnect once the queue is empty
        self.reconnect_now = False
        self.wake = asyncio.Event()
        self.status_due = True
        self.last_status = 0
        self.last_state = None
        self.sent = 0
        self.produced = 0
        self.last_err = ""
        self.alive_t = self.link_t = board.time()
        self.reboot_requested = False
        self.healthy = False
        self.sampling = True
        self.running = True
        self.tasks = []

    def _clock_floor(self):
        """Never start below the last known good time: a node that cannot reach NTP still has a
        clock TLS can check certificates with, and two boots without NTP never reuse timestamps.
        The clock is put on a period boundary, so the node's own grid starts at power-on."""
        b = self.board
        lkg = self.store.last_time()
        if b.time() < lkg:
            p = self.cfg["period"]
            b.set_time(-(-lkg // p) * p * 1000)

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
            k = 0
            if (start is None or last != (period, synced) or now - start > CATCH_UP * period
                    or now < start):
                # (re)align: first interval, new period, clock set or far behind. No reading covers
                # time before power-on, and slots already past are not sampled (capture says so).
                start = now - now % period
                if start < self.boot_t:
                    start += period
                late = b.time_ms() - start * 1000
                if late > 0:
                    k = -(-late // (sample * 1000))
            else:
                start += period  # late by a little: still one reading per interval, none skipped
            last = (period, synced)
            while k < expected:
                await self.sleep_until(start + k * sample)
                if self.synced != synced:
                    moved = self._on_grid(start, period)
                    if moved is None:
                        break  # close this interval early: the boot reading, re-stamped when sent
                    start, synced, last = moved, True, (period, True)
                    continue
                await self.kit.sample()
                self.alive_t = b.time()
                k += 1
            if self.synced != synced:
                moved = self._on_grid(start, period)
                if moved is not None:
                    start, synced, last = moved, True, (period, True)
            if self.synced == synced:
                await self.sleep_until(start + period)
            samples, values = self.kit.take()
            if not self.sampling:
                break  # stopped mid-interval: a partial reading would look like a bad capture
            self.produced += 1
            try:
                self.store.append(start, synced, period, expected, samples, values)
            except (OSError, MemoryError) as e:  # counted as dropped: sampling goes on
                self.store.drops += 1
                self.last_err = "store: %s" % e
            self.wake.set()

    def _on_grid(self, start, period):
        """Where the interval under way starts on the clock NTP just set, if that is exactly where
        a UTC interval starts (the node powered on in the first second of a period): then it goes
        on as that interval - closing it as the boot reading would give two readings with one
        timestamp, and InfluxDB would keep one. None otherwise."""
        moved = start + self.jump
        now = self.board.time()
        return moved if moved == now - now % period else None

    # -- clock ---------------------------------------------------------------
    async def sync_clock(self):
        """Ask each configured time server until one gives a sane answer; set the clock only then."""
        from knode import ntp
        try:
            return await ntp.sync(self)
        finally:
            unload("ntp")

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
            ota = None
            unload("ota")  # once per boot: not worth its bytecode in RAM afterwards

    # -- link ----------------------------------------------------------------
    def on_message(self, topic, payload, pid):
        """A command arrived: take it if there is room (acknowledged to the broker once handled),
        else leave it with the broker, which redelivers it when the node reconnects."""
        self.wake.set()
        if len(self.cmds) >= MAX_CMDS:
            self.refused = True
            return False
        self.cmds.append((payload, pid))
        return True

    async def link(self):
        b = self.board
        bo = backoff.Backoff(b.randbits, 1000, 300000)
        m = self.cfg["mqtt"]
        client = None
        while self.running:  # besides cancel(): CPython 3.11's wait_for can swallow a cancellation
            self.link_t = b.time()
            up_at = None
            dialled = False
            try:
                if not await net.join_wifi(b, self.cfg):
                    raise OSError("no Wi-Fi")
                dialled = True
                self.link_t = b.time()
                if b.time() >= self.ntp_next:
                    await self.sync_clock()
                if client is None:
                    client = net.client_for(b, self.cfg, self.on_message)  # once per boot: one TLS context
                self.link_t = b.time()
                host, port = m["brokers"][self.broker % len(m["brokers"])]
                await client.connect(host, port)
                up_at = b.time()
                self.client = client
                try:
                    await client.subscribe(wire.topic(self.did, "cmd"), 1)
                except OSError as e:
                    if not client.connected:
                        raise
                    self.last_err = "commands: %s" % e  # readings still flow; subscribed again next connection
                self.status_due = True
                await self.pump(client)
            except Exception as e:
                self.last_err = "%s: %s" % (type(e).__name__, e)
            self.client = None
            self.cmds = []  # not acknowledged: the broker sends them again
            if client is not None:
                await client.aclose()
            if self.reboot_requested:
                b.reset()
            if up_at is not None and b.time() - up_at >= STABLE_S:
                bo.reset()  # that connection worked: a new failure starts again at ~1 s
            self.link_t = b.time()
            if self.reconnect_now:
                self.reconnect_now = False
                continue
            if dialled:
                # This broker failed or went away: the next one in the list, after the usual backoff. The
                # reading whose PUBACK never came is still first in the store: it goes to that broker.
                self.broker = (self.broker + 1) % len(m["brokers"])
            await b.sleep_ms(bo.next_ms())

    async def pump(self, client):
        b = self.board
        while client.connected:
            self.link_t = b.time()
            while self.cmds:
                payload, pid = self.cmds.pop(0)
                from knode import commands
                await commands.handle(self, client, payload)
                payload = commands = None
                unload("commands")
                unload("config")
                self.cmds_done += 1
                if pid:
                    await client.puback(pid)
                if self.reboot_requested:
                    will = net.last_will(self.cfg)  # a clean goodbye suppresses the Will: say offline ourselves
                    await client.publish(will[0], will[1], 1, True)
                    await client.disconnect()
                    return
            if self.refused:
                self.refused = False
                self.reconnect_now = True
                await client.disconnect()  # the broker redelivers what the queue had no room for
                return
            if (self.status_due or self.last_state != self._state()
                    or b.time() - self.last_status >= self.cfg["status_every"]):
                await self.send_status(client)
            if b.time() >= self.ntp_next:
                await self.sync_clock()
            if len(self.store):
                recs = self.store.peek(batch.MAX_BATCH)
                n = batch.first_run(recs)
                payload = batch.encode_run(self.dev, self.kitno, recs, n)
                last = recs[n - 1][ringbuf.SEQ]
                recs = None
                await client.publish(wire.topic(self.did, "readings"), payload, 1)
                payload = None
                self.store.ack(last)
                self.sent += n
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
        """Feed the hardware watchdog only while the sampler AND the link make progress:
        a hung sampler, or a link stuck in a wait that never ends, resets the node."""
        wdt = self.board.watchdog(WDT_MS)
        while True:
            t = self.board.time()
            if (wdt is not None and t - self.alive_t < 2 * self.cfg["sample"] + 90
                    and t - self.link_t < LINK_STALL_S):
                wdt.feed()
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
        self.running = False
        for t in self.tasks:
            t.cancel()
        if self.client is not None:
            self.client.close()
