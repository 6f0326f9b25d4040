# A whole node's board for the MicroPython WebAssembly VM (the test runner's; not firmware).
#
# It gives the unmodified knode what knode.hal.Board gives it on an ESP32, from what the VM has:
# * time: a discrete-event virtual clock, the simulator's rule in small: time moves from one
#   sleeper's deadline to the next, never faster than `speedup` x the wall clock and never while a
#   task is runnable, so sampling is exact however slow the host is; network waits (asyncio.sleep,
#   wait_for) stay in real time, as on a node;
# * network: the runner's TCP bridge (tests/mpy/bridge.mjs, JS module jsnet) behind streams with
#   MicroPython's asyncio.Stream semantics: write() keeps what the send window did not take and
#   drain() sends it, close() does nothing, wait_closed() closes the socket. TLS: the context from
#   the VM's ssl (tests/mpy/vmssl.py, micropython-lib's behaviour) decides whether the broker's
#   certificate is checked, as mbedTLS does on the device;
# * flash: the runner mirrors a host directory at ROOT, so a killed VM is a power cut;
# * sensors: an SHT3x and SCD4x with their NACKs and timing, a PMS5003 sending a frame every 2.3 s
#   while awake, a noisy ADC, a traffic detector; NTP answered from the virtual clock.
import asyncio
import heapq
import random
import struct
import time
from asyncio import core

import jsnet

from knode.drivers import detector, pms, sensirion

US = 1000000
EPOCH_2000 = 946684800
NTP_UNIX = 2208988800


class Done(Exception):
    pass


class VClock:
    def __init__(self, start_us, speedup):
        self.now = start_us
        self.speedup = speedup
        self.heap = []
        self.seq = 0
        self.r0 = time.ticks_ms()
        self.v0 = start_us
        self.hooks = []  # (instant, seq, fn): run after every sleeper due at that instant
        self.instants = 0

    def at(self, t_us, fn):
        self.seq += 1
        heapq.heappush(self.hooks, (t_us, self.seq, fn))

    async def sleep_us(self, us):
        ev = asyncio.Event()
        self.seq += 1
        heapq.heappush(self.heap, (self.now + max(0, int(us)), self.seq, ev))
        await ev.wait()

    def _runnable(self, q):
        t = q.peek()
        return t is not None and time.ticks_diff(t.ph_key, time.ticks_ms()) <= 0

    async def drive(self):
        q = core._task_queue
        while True:
            while self._runnable(q):
                await asyncio.sleep_ms(0)
            d = self.heap[0][0] if self.heap else None
            hook = self.hooks and (d is None or self.hooks[0][0] < d)
            nxt = self.hooks[0][0] if hook else d
            if nxt is None:
                await asyncio.sleep_ms(5)
                continue
            if nxt > self.now:
                due = (nxt - self.v0) // 1000 / self.speedup
                wait = int(due - time.ticks_diff(time.ticks_ms(), self.r0))
                if wait > 0:
                    await asyncio.sleep_ms(min(wait, 20))  # a sleeper may arrive earlier meanwhile
                    continue
                if wait < -100:
                    # Behind (a busy host): go on from here at `speedup`, never faster, so a real-time
                    # network wait never spans more simulated time than it would on schedule.
                    self.r0 = time.ticks_ms()
                    self.v0 = self.now
                self.now = nxt
                self.instants += 1
            if hook:
                heapq.heappop(self.hooks)[2]()
                continue
            while self.heap and self.heap[0][0] == nxt:
                heapq.heappop(self.heap)[2].set()


class Stream:
    """MicroPython's asyncio.Stream over one bridge connection (reader and writer at once)."""

    def __init__(self, sid):
        self.sid = sid
        self.f = open("/dev/sock/%d" % sid, "r+b")
        self.out_buf = b""

    def _put(self, buf):
        if jsnet.state(self.sid):
            raise OSError(104, "ECONNRESET")
        return self.f.write(buf) or 0

    def write(self, buf):
        if not self.out_buf:
            n = self._put(buf)
            if n == len(buf):
                return
            buf = buf[n:]
        self.out_buf += buf

    async def drain(self):
        if not self.out_buf:
            await asyncio.sleep_ms(0)
            return
        mv = memoryview(self.out_buf)
        off = 0
        while off < len(mv):
            if not jsnet.room(self.sid):
                await jsnet.writable(self.sid)  # each awaited promise costs a JS<->Python proxy: only when needed
            off += self._put(mv[off:])
        self.out_buf = b""

    async def readexactly(self, n):
        r = b""
        while n:
            if not jsnet.avail(self.sid):
                await jsnet.readable(self.sid)
            d = self.f.read(n)
            if d:
                r += d
                n -= len(d)
            elif jsnet.state(self.sid):
                raise EOFError
        return r

    def close(self):
        pass  # as on MicroPython: the socket stays open until wait_closed()

    async def wait_closed(self):
        if self.f is not None:
            self.f.close()
            self.f = None
            jsnet.close(self.sid)


# -- sensors ---------------------------------------------------------------------------------------
def _nack():
    return OSError(19, "ENODEV")


class I2C:
    def __init__(self, b):
        self.b = b
        self.sht = None
        self.cmd = (0, 0)
        self.scd0 = None
        self.nread = 0

    def writeto(self, addr, data):
        now = self.b.clock.now
        if addr == sensirion.SHT3X_ADDR:
            self.sht = now + 12500
            return len(data)
        if addr == sensirion.SCD4X_ADDR:
            c = data[0] << 8 | data[1]
            if c == sensirion.SCD4X_START:
                if self.scd0 is not None:
                    raise _nack()
                self.scd0 = now
                self.nread = 0
            elif c == sensirion.SCD4X_STOP:
                self.scd0 = None
            self.cmd = (c, now)
            return len(data)
        raise _nack()

    def readfrom_into(self, addr, buf):
        now = self.b.clock.now
        traw, hraw = 26214 + (now // US) % 600, 30000 + (now // US) % 900  # ~17 C, ~46 %RH
        if addr == sensirion.SHT3X_ADDR:
            if self.sht is None or now < self.sht:
                raise _nack()
            self.sht = None
            data = sensirion.pack([traw, hraw])
        elif addr == sensirion.SCD4X_ADDR:
            c, at = self.cmd
            new = self.scd0 is not None and (now - self.scd0) // (5 * US) > self.nread
            if now - at < 1000:
                raise _nack()
            if c == sensirion.SCD4X_READY:
                data = sensirion.pack([0x8006 if new else 0x8000])
            elif c == sensirion.SCD4X_READ and new:
                self.nread = (now - self.scd0) // (5 * US)
                data = sensirion.pack([430 + (now // US) % 40, traw, hraw])
            else:
                raise _nack()
            self.cmd = (0, 0)
        else:
            raise _nack()
        buf[:] = data[:len(buf)]


class PMSUART:
    def __init__(self, b):
        self.b = b
        self.buf = bytearray()
        self.awake = True
        self.next = b.clock.now + US

    def _advance(self):
        now = self.b.clock.now
        while self.awake and self.next <= now:
            if len(self.buf) <= 512 - pms.FRAME:
                v = 8 + (self.next // US) % 7
                self.buf += pms.frame(v, v + 3, v + 9)
            self.next += 2300000

    def write(self, data):
        self._advance()
        if data == pms.CMD_SLEEP:
            self.awake = False
        elif data == pms.CMD_WAKE and not self.awake:
            self.awake = True
            self.next = self.b.clock.now + US
        return len(data)

    def any(self):
        self._advance()
        return len(self.buf)

    def read(self, n=-1):
        self._advance()
        if not self.buf:
            return None
        out = bytes(self.buf)
        self.buf = bytearray()
        return out


class DetectorUART:
    def __init__(self, b):
        self.b = b
        self.polled = False
        self.last = b.clock.now

    def write(self, data):
        self.polled = True
        return len(data)

    def read(self, n=-1):
        now = self.b.clock.now
        k = (now - self.last) // (20 * US)  # a vehicle every 20 s
        self.last += k * 20 * US
        out = bytearray()
        for i in range(k):
            out += detector.line("V", ["I" if i % 2 else "O", 300 + i % 50, 40 + i % 30])
        if self.polled:
            out += detector.line("P", [1])
            self.polled = False
        return bytes(out) or None


class ADC:
    def __init__(self, pin):
        self.pin = pin

    def read_uv(self):
        base = 305000 if self.pin == 34 else 286000
        return base + random.getrandbits(15) - 16384  # +-16 mV of noise per read


class Pin:
    def __init__(self, n):
        self.n = n

    def value(self, v=None):
        return 1


class WDT:
    def __init__(self, board, timeout_ms):
        self.board = board
        self.timeout_us = timeout_ms * 1000
        self.fed = board.clock.now
        self.feeds = 0

    def feed(self):
        self.fed = self.board.clock.now
        self.feeds += 1


class WLAN:
    def active(self, on=None):
        return True

    def connect(self, ssid, psk=""):
        pass

    def disconnect(self):
        pass

    def isconnected(self):
        return jsnet.wifi() == 1

    def status(self, what=None):
        return -61 if what == "rssi" else 1010


class VMBoard:
    """knode.hal.Board for the VM."""

    def __init__(self, root, clock, kit, rtc_us=None):
        self.root = root
        self.clock = clock
        self.kit = kit
        self.machine = True  # present: the node has hardware
        self.network = True
        self.boot_us = clock.now
        self.rtc_us = EPOCH_2000 * US - clock.now if rtc_us is None else rtc_us
        self._wlan = WLAN()
        self.wdt = None
        self.resets = 0
        self.on_reset = None

    def path(self, p):
        return self.root + p

    def chip(self):
        return "esp32"

    def time(self):
        return (self.clock.now + self.rtc_us) // US

    def time_ms(self):
        return (self.clock.now + self.rtc_us) // 1000

    def ticks_ms(self):
        return (self.clock.now - self.boot_us) // 1000

    def set_time(self, t_ms):
        self.rtc_us = (t_ms * 1000 - self.clock.now + 500) // 1000 * 1000

    async def sleep_ms(self, ms):
        await self.clock.sleep_us(ms * 1000)

    def randbits(self, n):
        return random.getrandbits(n) if n <= 30 else (random.getrandbits(n - 30) << 30) | random.getrandbits(30)

    def uart(self, uid, baudrate, tx, rx, rxbuf):
        return PMSUART(self) if self.kit == "air" else DetectorUART(self)

    def i2c(self, scl, sda, freq=100000):
        return I2C(self)

    def adc(self, pin):
        return ADC(pin)

    def pin(self, n):
        return Pin(n)

    def wlan(self):
        return self._wlan

    async def open_connection(self, host, port, ssl=None):
        if ssl is None:
            sid = await jsnet.open(host, port, 0, None, None, 0)
        else:
            ca = ssl._ca.decode() if ssl._ca else None
            sid = await jsnet.open(host, port, 1, ca, host, 1 if ssl.verify_mode == 2 else 0)
        if sid < 0:
            raise OSError(-sid, jsnet.error() or "connect failed")
        s = Stream(sid)
        return s, s

    async def udp_exchange(self, host, port, data, timeout_ms):
        if jsnet.wifi() != 1:
            await self.sleep_ms(timeout_ms)
            return None
        now = self.clock.now
        s = now // US + NTP_UNIX
        frac = ((now % US) << 32) // US
        r = bytearray(48)
        r[0] = 0x24
        r[1] = 2
        r[24:32] = data[40:48]
        struct.pack_into("!IIII", r, 32, s, frac, s, frac)
        return bytes(r)

    def free_heap(self):
        import gc
        gc.collect()
        return gc.mem_free()

    def reset(self):
        self.resets += 1
        if self.on_reset is not None:
            self.on_reset("reset")
        raise Done("reset")

    def watchdog(self, timeout_ms):
        self.wdt = WDT(self, timeout_ms)
        return self.wdt
