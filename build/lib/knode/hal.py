# kerbside node firmware - hardware abstraction layer.
#
# Why: the same modules must import in the MicroPython WebAssembly VM (no
# machine/network there), run on an ESP32, and run under CPython inside the
# fleet simulator with many nodes in one process. So nothing in the firmware
# imports machine/network at module level; it asks a Board object, one per
# node. The simulator passes its own Board with fake hardware and a virtual
# clock; on a device Board() wraps the real modules.
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
SYNCED_AFTER = 1700000000  # a clock before Nov 2023 has never been set by NTP


def optional(name):
    """The module, or None where the port does not have it (the VM, CPython)."""
    try:
        return __import__(name)
    except ImportError:
        return None


class Board:
    """The real ESP32: hardware modules, the RTC clock and the flash root."""

    def __init__(self, root=""):
        self.root = root
        self.machine = optional("machine")
        self.network = optional("network")
        self.ntptime = optional("ntptime")
        self._epoch = EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0
        self._wlan = None

    def path(self, p):
        return self.root + p

    def time(self):
        """Node clock in Unix seconds (unsynced it starts near 2000-01-01)."""
        return int(time.time()) + self._epoch

    def time_ms(self):
        return time.time_ns() // 1000000 + self._epoch * 1000

    def ticks_ms(self):
        return time.ticks_ms()

    async def sleep_ms(self, ms):
        await asyncio.sleep_ms(ms) if hasattr(asyncio, "sleep_ms") else await asyncio.sleep(ms / 1000)

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

    def wlan(self) -> "network.WLAN | None":
        if self._wlan is None and self.network is not None:
            import network
            w = network.WLAN(network.STA_IF)
            w.active(True)
            self._wlan = w
        return self._wlan

    def ntp_sync(self, host: str) -> bool:
        """Set the RTC from NTP; True on success. Blocking but bounded by ntptime's own timeout."""
        if self.ntptime is None:
            return False
        import ntptime
        ntptime.host = host
        ntptime.settime()
        return self.time() > SYNCED_AFTER

    def free_heap(self):
        try:
            import gc
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
