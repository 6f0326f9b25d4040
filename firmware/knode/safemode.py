# kerbside node firmware - safe mode: the link without the application.
#
# Why: when the application cannot start (a module fails to import, the store
# or a sensor raises at start-up) a node on a lamp post would otherwise reset
# forever, unreachable until someone climbs up with a laptop. main.py runs this
# instead: it joins Wi-Fi, connects to the broker, publishes a status whose
# `fw` starts with "SAFE" and whose `safe` key says what failed, and answers
# commands through knode.commands (status, reboot, ota, config changes; the
# config takes effect at the next boot). A signed update can then fix the node.
#
# It imports only the link's modules (no node, sensors, drivers, ring buffer)
# and gives up after SAFE_S so that a transient failure gets another try.
import asyncio

from knode import backoff, commands, config, net, wire
from knode.hal import SYNCED_AFTER

SAFE_S = 3600
FEED_S = 60    # the watchdog is fed only while the link made progress this recently


class _NoKit:
    """set_calibration in safe mode saves the calibration for the next boot; there is no kit to update."""
    cal = None


class Safe:
    """As much of knode.node.Node as commands.handle and ota use."""

    def __init__(self, board, why, fw=""):
        self.board = board
        self.cfg = config.load(board.path(config.PATH))
        self.did = self.cfg["device"]
        self.dev = wire.device_bytes(self.did)
        self.why = why
        self.fw = ("SAFE " + fw)[:32].rstrip()
        self.kit = _NoKit()
        self.cmds = []
        self.wake = asyncio.Event()
        self.status_due = True
        self.reboot_requested = False
        self.boot_t = board.time()
        self.progress_t = board.time()
        self.statuses = 0

    def status(self):
        b = self.board
        return {"v": 1, "id": self.dev, "online": True, "t": b.time(), "synced": b.time() > SYNCED_AFTER,
                "fw": self.fw, "kit": wire.KITS[self.cfg["kit"]], "up": max(0, b.time() - self.boot_t),
                "cfg": self.cfg["cfg"], "safe": self.why[:120]}

    def on_message(self, topic, payload, pid):
        """As the node does: take it if there is room (acknowledged to the broker once handled), else leave
        it with the broker, which redelivers it at the next connection."""
        self.wake.set()
        if len(self.cmds) >= 4:
            return False
        self.cmds.append((payload, pid))
        return True

    async def link(self, until):
        b = self.board
        bo = backoff.Backoff(b.randbits, 1000, 60000)
        m = self.cfg["mqtt"]
        client = None
        while not self.reboot_requested and b.time() < until:
            try:
                if not await net.join_wifi(b, self.cfg):
                    raise OSError("no Wi-Fi")
                if client is None:
                    client = net.client_for(b, self.cfg, self.on_message)  # once: one TLS context per boot
                await client.connect(m["host"], m["port"])
                await client.subscribe(wire.topic(self.did, "cmd"), 1)
                bo.reset()
                self.status_due = True
                while client.connected and not self.reboot_requested and b.time() < until:
                    self.progress_t = b.time()
                    while self.cmds and not self.reboot_requested:
                        payload, pid = self.cmds.pop(0)
                        await commands.handle(self, client, payload)
                        if pid:
                            await client.puback(pid)
                    if self.status_due:
                        await client.publish(wire.topic(self.did, "status"), wire.encode_status(self.status()), 1, True)
                        self.status_due = False
                        self.statuses += 1
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), 5)
                    except asyncio.TimeoutError:
                        pass
                if client.connected:
                    will = net.last_will(self.cfg)
                    await client.publish(will[0], will[1], 1, True)
                    await client.disconnect()
            except Exception:
                pass
            self.cmds = []  # not acknowledged: the broker sends them again
            if client is not None:
                await client.aclose()
            self.progress_t = b.time()
            if not self.reboot_requested and b.time() < until:
                await b.sleep_ms(bo.next_ms())

    async def feeder(self, wdt):
        while True:
            if wdt is not None and self.board.time() - self.progress_t < FEED_S:
                wdt.feed()
            await self.board.sleep_ms(10000)

    async def run(self, wdt, seconds):
        feed = asyncio.create_task(self.feeder(wdt))
        try:
            await self.link(self.board.time() + seconds)
        finally:
            feed.cancel()


def run(board, wdt, why, fw="", seconds=None):
    """Keep the link up until a reboot command or `seconds` pass; then main.py resets the node."""
    safe = Safe(board, why, fw)
    asyncio.run(safe.run(wdt, SAFE_S if seconds is None else seconds))
    return safe
