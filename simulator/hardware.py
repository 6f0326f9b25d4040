"""Simulated ESP32 hardware at the driver boundary: the firmware runs unchanged on top.

A SimBoard has the same interface as knode.hal.Board, with a fake `machine`
(UART, I2C, Pin, ADC, WDT), a fake `network` (WLAN) and NTP on a virtual
clock. The fake sensors speak the real wire formats (PMS5003 frames,
Sensirion words with CRC-8, ADC microvolts, detector lines), produced from
simulator.city signals, so the real drivers parse them.
"""

from __future__ import annotations

import random
import types
from dataclasses import dataclass, field
from pathlib import Path

from kerbside.core.errors import SimulatorSignal
from kerbside.simulator.city import Site
from kerbside.simulator.clock import VirtualClock
from knode.drivers import detector, no2, pms, sensirion
from knode.hal import EPOCH_2000


class Reboot(SimulatorSignal):
    """machine.reset() in the simulator: the fleet starts the node again."""


@dataclass
class Faults:
    """Fault state of one node, switched by the fleet's fault schedule."""

    wifi_down: bool = False
    never_sync: bool = False
    broken_sensor: bool = False
    reboot_at: list[float] = field(default_factory=list)


class FakePin:
    def __init__(self, n: int, *args: object, **kw: object) -> None:
        self.n = n


class FakeUART:
    """Serial port whose far end is a simulated sensor producing bytes on demand."""

    def __init__(self, board: SimBoard) -> None:
        self.board = board
        self.last = board.clock.now()
        self.awake = True

    def _elapsed(self) -> float:
        now = self.board.clock.now()
        dt = now - self.last
        self.last = now
        return dt

    def any(self) -> int:
        return 1

    def write(self, data: bytes) -> int:
        if data == pms.CMD_SLEEP:
            self.awake = False
        elif data == pms.CMD_WAKE:
            self.awake = True
        return len(data)

    def read(self, n: int = -1) -> bytes | None:
        raise NotImplementedError


class PMSUART(FakeUART):
    def read(self, n: int = -1) -> bytes | None:
        dt = self._elapsed()
        if not self.awake:
            return None
        b = self.board
        frames = min(3, int(dt))
        if frames <= 0:
            return None
        if b.faults.broken_sensor:
            return bytes(b.rng.getrandbits(8) for _ in range(32 * frames))  # a dying sensor: noise
        pm1, pm25, pm10 = b.site.pm(b.clock.now())
        j = b.rng.gauss
        f = pms.frame(max(0, round(pm1 + j(0, 0.8))), max(0, round(pm25 + j(0, 1))), max(0, round(pm10 + j(0, 1.5))))
        return f[7:] + f * frames  # a partial frame first: the parser must resynchronise


class DetectorUART(FakeUART):
    def __init__(self, board: SimBoard) -> None:
        super().__init__(board)
        self.polled = False

    def write(self, data: bytes) -> int:
        self.polled = True
        return len(data)

    def read(self, n: int = -1) -> bytes | None:
        dt = self._elapsed()
        b = self.board
        if b.faults.broken_sensor:
            return None  # detector silent: capture 0, counts null
        t = b.clock.now()
        rates = b.site.vehicles_per_min(t)
        out = bytearray()
        for direction in "IO":
            for cls, rate in enumerate(rates):
                n_veh = _poisson(b.rng, rate * dt / 60)
                for _ in range(n_veh):
                    out += detector.line("V", [direction, _speed(b.rng, cls), _length(b.rng, cls)])
        if self.polled:
            out += detector.line("P", [1])
            self.polled = False
        return bytes(out) or None


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, lam**0.5)))
    n, p, limit = 0, 1.0, 2.718281828459045 ** -lam
    while True:
        p *= rng.random()
        if p <= limit:
            return n
        n += 1


_LENGTHS = ((15, 24), (35, 52), (56, 74), (80, 180))  # dm per class
_SPEEDS = (380, 330, 310, 280)  # mean 0.1 km/h per class in town


def _length(rng: random.Random, cls: int) -> int:
    lo, hi = _LENGTHS[cls]
    return rng.randint(lo, hi)


def _speed(rng: random.Random, cls: int) -> int:
    return max(50, round(rng.gauss(_SPEEDS[cls], 60)))


class FakeI2C:
    """SHT3x at 0x44 and SCD4x at 0x62: answers to the last command written, with CRCs."""

    def __init__(self, board: SimBoard, *args: object, **kw: object) -> None:
        self.board = board
        self.cmd: dict[int, int] = {}

    def writeto(self, addr: int, data: bytes) -> int:
        if addr not in (sensirion.SHT3X_ADDR, sensirion.SCD4X_ADDR):
            raise OSError(19, "ENODEV")
        self.cmd[addr] = data[0] << 8 | data[1]
        return len(data)

    def readfrom_into(self, addr: int, buf: bytearray) -> None:
        b = self.board
        t = b.clock.now()
        temp, rh, _ = b.site.weather(t)
        traw = max(0, min(65535, round((temp + 45) * 65535 / 175)))
        hraw = max(0, min(65535, round(rh * 65535 / 100)))
        if addr == sensirion.SHT3X_ADDR and self.cmd.get(addr) == sensirion.SHT3X_MEASURE:
            data = sensirion.pack([traw, hraw])
        elif addr == sensirion.SCD4X_ADDR and self.cmd.get(addr) == sensirion.SCD4X_READ:
            data = sensirion.pack([round(b.site.co2(t) + b.rng.gauss(0, 5)), traw, hraw])
        else:
            raise OSError(19, "ENODEV")
        buf[:] = data[: len(buf)]


class FakeADC:
    ATTN_11DB = 3

    def __init__(self, board: SimBoard, pin: FakePin, **kw: object) -> None:
        self.board = board
        self.pin = pin.n

    def read_uv(self) -> int:
        """WE or AE electrode voltage that the NO2 driver turns back into the city's NO2."""
        b = self.board
        t = b.clock.now()
        cal = {**no2.DEFAULT_CAL, **b.cal}
        temp, _, _ = b.site.weather(t)
        ae = cal["ae0"] + 4.0 + b.rng.gauss(0, 0.3)
        if self.pin == b.pins.get("no2_ae", 35):
            return round(ae * 1000)
        ppb = b.site.no2(t) / 1.88 + b.rng.gauss(0, 0.8)
        we = cal["we0"] + ppb * cal["sens"] + no2.n_of_t(cal["n_t"], temp) * (ae - cal["ae0"])
        return round(we * 1000)


class FakeWDT:
    def __init__(self, timeout: int = 5000, **kw: object) -> None:
        self.timeout = timeout
        self.feeds = 0

    def feed(self) -> None:
        self.feeds += 1


class FakeWLAN:
    def __init__(self, board: SimBoard) -> None:
        self.board = board
        self._active = False
        self.connects = 0

    def active(self, on: bool | None = None) -> bool:
        if on is not None:
            self._active = on
        return self._active

    def connect(self, ssid: str, psk: str = "") -> None:
        self.connects += 1

    def disconnect(self) -> None:
        pass

    def isconnected(self) -> bool:
        return self._active and not self.board.faults.wifi_down

    def status(self, what: str | None = None) -> int:
        return -55 - (self.board.index % 25) if what == "rssi" else 1010


class SimBoard:
    """One virtual node's hardware: same interface as knode.hal.Board."""

    def __init__(self, index: int, root: Path, clock: VirtualClock, site: Site, kit: str, seed: int,
                 faults: Faults | None = None, cal: dict | None = None, pins: dict | None = None) -> None:
        self.index = index
        self.root = str(root)
        root.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.site = site
        self.kit = kit
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.cal = cal or {}
        self.pins = pins or {}
        self.synced = False
        self.boot_us = clock.now_us()
        self.boots = 0
        self._wlan: FakeWLAN = FakeWLAN(self)
        self.machine = self._machine()
        self.network = types.SimpleNamespace(STA_IF=0)  # present: the node has Wi-Fi (see wlan())
        self.ntptime = None

    def _machine(self) -> types.SimpleNamespace:
        """Present, so the firmware knows it has hardware; the parts come from the methods below."""
        return types.SimpleNamespace(reset=self.reset)

    def uart(self, uid: int, baudrate: int, tx: int, rx: int, rxbuf: int) -> FakeUART:
        return PMSUART(self) if self.kit == "air" else DetectorUART(self)

    def i2c(self, scl: int, sda: int, freq: int = 100000) -> FakeI2C:
        return FakeI2C(self)

    def adc(self, pin: int) -> FakeADC:
        return FakeADC(self, FakePin(pin))

    def power_on(self) -> None:
        """A (re)boot: the RTC starts again from 2000-01-01 until NTP sets it."""
        self.synced = False
        self.boot_us = self.clock.now_us()
        self.boots += 1
        self._wlan = FakeWLAN(self)

    # -- knode.hal.Board interface ---------------------------------------------
    def path(self, p: str) -> str:
        return self.root + p

    def time(self) -> int:
        return int(self.time_ms() // 1000)

    def time_ms(self) -> int:
        """Whole milliseconds, from the clock's integer microseconds: no float rounding, so a node
        woken at the deadline it computed reads exactly that deadline."""
        now = self.clock.now_us()
        if self.synced:
            return now // 1000
        return EPOCH_2000 * 1000 + (now - self.boot_us) // 1000

    def ticks_ms(self) -> int:
        return (self.clock.now_us() - self.boot_us) // 1000

    async def sleep_ms(self, ms: float) -> None:
        await self.clock.sleep(ms / 1000)

    def block_ms(self, ms: float) -> None:
        """Blocking sleep on the virtual clock (the self-test runs outside the event loop)."""
        self.clock.block(ms / 1000)

    def randbits(self, n: int) -> int:
        return self.rng.getrandbits(n)

    def wlan(self) -> FakeWLAN:
        self._wlan.active(True)
        return self._wlan

    def ntp_sync(self, host: str) -> bool:
        if self.faults.never_sync or self.faults.wifi_down:
            raise OSError(110, "ETIMEDOUT")
        self.synced = True
        return True

    def free_heap(self) -> int:
        return 61440 - self.index % 7 * 512

    def reset(self) -> None:
        raise Reboot()

    def watchdog(self, timeout_ms: int) -> FakeWDT:
        return FakeWDT(timeout_ms)
