# kerbside node firmware - hardware abstraction layer.
#
# Why: the same modules must run on an ESP32, in the MicroPython WebAssembly
# VM (tests: no machine/network/socket there, the test runner's board gives
# it a TCP bridge instead) and under CPython inside the fleet simulator with
# many nodes in one process. So nothing in the firmware imports machine,
# network or socket at module level; it asks a Board object, one per node.
# The simulator and the VM tests pass their own Board with fake hardware and
# a virtual clock; on a device Board() wraps the real modules.
#
# What a board provides, and nothing else is used by the firmware:
#   time()/time_ms()/ticks_ms(), set_time(ms), await sleep_ms(ms)
#   chip()                         "esp32", "esp32s3", "esp32c3" or None
#   uart()/i2c()/adc()/pin()       machine peripherals
#   wlan(), rssi                   network.WLAN
#   await open_connection(host, port, ssl)   asyncio streams (TLS if ssl)
#   await udp_exchange(host, port, data, ms) one datagram out, the first one back (NTP)
#   watchdog(ms), reset(), free_heap(), randbits(n)
import time

try:
    import asyncio
except ImportError:  # pragma: no cover - every supported port has asyncio
    asyncio = None

# mypy treats TYPE_CHECKING as True: the hardware calls below are checked
# against micropython-esp32-stubs, while no port ever imports these here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import machine
    import network

# MicroPython ports that count from 2000 report time() 946684800 s behind Unix.
EPOCH_2000 = 946684800
SYNCED_AFTER = 1700000000  # no clock NTP ever set reads earlier than Nov 2023
MIN_MICROPYTHON = (1, 23, 0)  # ssl.SSLContext (micropython-lib over the tls module) and asyncio streams with ssl=


def unload(name):
    """Forget a module used only now and then (pins at start, NTP, commands): its bytecode is
    ~2-5 KB of GC heap each on a node that loads .mpy files, so it is loaded again when needed.
    Only on MicroPython: under CPython (the simulator) it would only cost time, and a class
    imported again is a different class to code that kept the old one."""
    import sys
    if sys.implementation.name != "micropython":
        return
    sys.modules.pop("knode." + name, None)
    import knode
    if hasattr(knode, name):
        delattr(knode, name)


def optional(name):
    """The module, or None where the port does not have it (the VM, CPython)."""
    try:
        return __import__(name)
    except ImportError:
        return None


def chip_of(machine_name):
    """The chip family from os.uname().machine, e.g. "Generic ESP32S3 module with ESP32S3"."""
    m = machine_name.upper()
    for c in ("ESP32S3", "ESP32C3", "ESP32S2", "ESP32C6"):
        if c in m:
            return c.lower()
    return "esp32" if "ESP32" in m else None


class Board:
    """The real ESP32: hardware modules, the RTC clock and the flash root."""

    def __init__(self, root=""):
        self.root = root
        self.machine = optional("machine")
        self.network = optional("network")
        self._epoch = EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0
        self._wlan = None
        self._addr = {}  # host -> resolved address: DNS blocks the event loop, so once per host and boot

    def path(self, p):
        return self.root + p

    def chip(self):
        import os
        try:
            return chip_of(os.uname().machine)
        except AttributeError:
            return None

    # -- time ------------------------------------------------------------------
    def time(self):
        """Node clock in Unix seconds (before it is set it starts near 2000-01-01)."""
        return int(time.time()) + self._epoch

    def time_ms(self):
        return time.time_ns() // 1000000 + self._epoch * 1000

    def ticks_ms(self):
        return time.ticks_ms()

    def set_time(self, t_ms):
        """Set the RTC to t_ms (Unix milliseconds, UTC)."""
        import machine
        s = t_ms // 1000 - self._epoch
        tm = time.gmtime(s)
        machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6], tm[3], tm[4], tm[5], (t_ms % 1000) * 1000))

    async def sleep_ms(self, ms):
        await asyncio.sleep_ms(int(ms)) if hasattr(asyncio, "sleep_ms") else await asyncio.sleep(ms / 1000)

    def randbits(self, n):
        import random
        return random.getrandbits(n)

    # -- hardware: each call imports its module, so importing hal never needs it --
    def uart(self, uid: int, baudrate: int, tx: int, rx: int, rxbuf: int) -> "machine.UART":
        import machine
        return machine.UART(uid, baudrate=baudrate, tx=tx, rx=rx, rxbuf=rxbuf)

    def i2c(self, scl: int, sda: int, freq: int = 100000) -> "machine.I2C":
        import machine
        return machine.I2C(0, scl=machine.Pin(scl), sda=machine.Pin(sda), freq=freq)

    def adc(self, pin: int) -> "machine.ADC":
        import machine
        return machine.ADC(machine.Pin(pin), atten=machine.ADC.ATTN_11DB)

    def pin(self, n: int) -> "machine.Pin":
        import machine
        return machine.Pin(n, machine.Pin.OUT)

    def wlan(self) -> "network.WLAN | None":
        if self._wlan is None and self.network is not None:
            import network
            w = network.WLAN(network.STA_IF)
            w.active(True)
            self._wlan = w
        return self._wlan

    # -- network -----------------------------------------------------------------
    async def open_connection(self, host, port, ssl=None):
        """asyncio streams to host:port; with an SSLContext, TLS checking the broker's name.
        The handshake runs inside the first drain(): the caller bounds the whole exchange."""
        if ssl is None:
            return await asyncio.open_connection(host, port)
        return await asyncio.open_connection(host, port, ssl=ssl, server_hostname=host)

    def _resolve(self, host, port):
        a = self._addr.get((host, port))
        if a is None:
            import socket
            a = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]  # blocking, bounded by lwIP's DNS timeout
            self._addr[(host, port)] = a
        return a

    async def udp_exchange(self, host, port, data, timeout_ms):
        """Send one datagram and return the first one that comes back, or None after timeout_ms.
        Polls a non-blocking socket: the event loop (and the sampler) keep running meanwhile."""
        import socket
        try:
            addr = self._resolve(host, port)
        except OSError:
            return None
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            s.sendto(data, addr)
            waited = 0
            while waited < timeout_ms:
                try:
                    return s.recv(64)
                except OSError:
                    pass  # EAGAIN: nothing yet
                await self.sleep_ms(20)
                waited += 20
            self._addr.pop((host, port), None)  # resolve again next time: the server may have moved
            return None
        finally:
            s.close()

    # -- housekeeping --------------------------------------------------------------
    def free_heap(self):
        """Free bytes of the GC heap after a collection: the headroom right now, not counting
        what the heap might still grow by."""
        try:
            import gc
            gc.collect()
            return gc.mem_free()
        except (ImportError, AttributeError):
            return 0

    def reset(self):
        if self.machine is not None:
            import machine
            machine.reset()
        raise SystemExit("reset")

    def watchdog(self, timeout_ms: int) -> "machine.WDT | None":
        if self.machine is None:
            return None
        import machine
        return machine.WDT(timeout=timeout_ms)
