"""Simulated ESP32 hardware at the driver boundary: the firmware runs unchanged on top.

A SimBoard has the same interface as knode.hal.Board, with a fake `machine`
(UART, I2C, Pin, ADC, WDT), a fake `network` (WLAN), an NTP server and the RTC
on a virtual clock. The fake sensors speak the real wire formats (PMS5003 and
SDS011 frames, Sensirion words with CRC-8, ADS1115 registers, ADC microvolts,
detector lines), produced from simulator.city signals, and keep the timing
their datasheets give, because the drivers depend on it:

* SHT3x: NACKs a read until its single-shot conversion is done (12.5 ms typical);
* SCD4x: 1 ms per command, a new measurement every 5 s after start, read_measurement
  NACKed when there is none, a second start NACKed while measuring, 500 ms after stop;
* PMS5003: a frame every 2.3 s in stable mode, 0.2-0.8 s in fast mode when PM changes
  fast, nothing while asleep, low readings for the 30 s after waking (the fan spins up),
  a 512-byte UART buffer that drops what does not fit;
* SDS011: a frame a second while working, nothing asleep, the same warm-up;
* ESP32 ADC: read_uv() is calibrated but still nonlinear by a few mV and noisy by ~12 mV
  per read at 11 dB; ADS1115: 7.8 ms per conversion, stale register until then.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kerbside.core.errors import SimulatorSignal
from kerbside.simulator.city import Site
from kerbside.simulator.clock import US, VirtualClock
from knode import ntp
from knode.drivers import ads1115, detector, no2, pms, sds011, sensirion
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
        self.level = 1

    def value(self, v: int | None = None) -> int:
        if v is not None:
            self.level = v
        return self.level


class FakeUART:
    """Serial port whose far end is a simulated sensor; bytes arrive on a timeline into a bounded RX buffer."""

    def __init__(self, board: SimBoard, rxbuf: int = 512) -> None:
        self.board = board
        self.rxbuf = rxbuf
        self.buf = bytearray()
        self.last_us = board.clock.now_us()
        self.dropped = 0

    def _receive(self, data: bytes) -> None:
        room = self.rxbuf - len(self.buf)
        if len(data) > room:
            self.dropped += len(data) - room  # the driver's ring buffer is full: new bytes are lost
            data = data[:max(0, room)]
        self.buf += data

    def _advance(self) -> None:
        now = self.board.clock.now_us()
        if now > self.last_us:
            self._produce(self.last_us, now)
        self.last_us = now

    def _produce(self, t0_us: int, t1_us: int) -> None:
        """Bytes the far end sends in (t0, t1]."""

    def any(self) -> int:
        self._advance()
        return len(self.buf)

    def write(self, data: bytes) -> int:
        self._advance()
        return len(data)

    def read(self, n: int = -1) -> bytes | None:
        self._advance()
        if not self.buf:
            return None
        out = bytes(self.buf if n < 0 else self.buf[:n])
        del self.buf[:len(out)]
        return out



class PMSUART(FakeUART):
    """PMS5003 in active mode: frames on its own timeline while awake."""

    WARMUP_US = pms.WARMUP_S * US

    def __init__(self, board: SimBoard, rxbuf: int = 512) -> None:
        super().__init__(board, rxbuf)
        self.awake = True
        self.woke_us = board.clock.now_us()  # powered with the board
        self.next_us = self.woke_us + US  # the first frame a second after power-up
        self.prev_pm25: float | None = None

    def write(self, data: bytes) -> int:
        self._advance()
        if data == pms.CMD_SLEEP:
            self.awake = False
        elif data == pms.CMD_WAKE and not self.awake:
            self.awake = True
            self.woke_us = self.board.clock.now_us()
            self.next_us = self.woke_us + US
        return len(data)

    def set_pin(self, level: int) -> None:
        self.write(pms.CMD_WAKE if level else pms.CMD_SLEEP)

    def _produce(self, t0_us: int, t1_us: int) -> None:
        while self.awake and self.next_us <= t1_us:
            t = self.next_us
            self._receive(self._frame(t))
            self.next_us = t + self._gap(t)

    def _gap(self, t_us: int) -> int:
        """2.3 s in stable mode; 0.2-0.8 s when the concentration is moving fast."""
        pm25 = self.board.site.pm(t_us / US)[1]
        fast = self.prev_pm25 is not None and abs(pm25 - self.prev_pm25) > 0.1 * max(5.0, self.prev_pm25)
        self.prev_pm25 = pm25
        return round(self.board.rng.uniform(0.2, 0.8) * US) if fast else 2_300_000

    def _frame(self, t_us: int) -> bytes:
        b = self.board
        if b.faults.broken_sensor:
            return bytes(b.rng.getrandbits(8) for _ in range(pms.FRAME))  # a dying sensor: noise
        ramp = min(1.0, 0.3 + 0.7 * (t_us - self.woke_us) / self.WARMUP_US)  # the fan spins up
        pm1, pm25, pm10 = (ramp * x for x in b.site.pm(t_us / US))
        j = b.rng.gauss
        return pms.frame(max(0, round(pm1 + j(0, 0.8))), max(0, round(pm25 + j(0, 1))), max(0, round(pm10 + j(0, 1.5))))


class SDSUART(PMSUART):
    """SDS011 in active reporting mode: a frame every second while working."""

    def write(self, data: bytes) -> int:
        self._advance()
        if data == sds011.CMD_SLEEP:
            self.awake = False
        elif data == sds011.CMD_WAKE and not self.awake:
            self.awake = True
            self.woke_us = self.board.clock.now_us()
            self.next_us = self.woke_us + US
        return len(data)

    def _gap(self, t_us: int) -> int:
        return US

    def _frame(self, t_us: int) -> bytes:
        b = self.board
        if b.faults.broken_sensor:
            return bytes(b.rng.getrandbits(8) for _ in range(sds011.FRAME))
        ramp = min(1.0, 0.3 + 0.7 * (t_us - self.woke_us) / self.WARMUP_US)
        _, pm25, pm10 = b.site.pm(t_us / US)
        return sds011.frame(max(0, round(10 * ramp * pm25)), max(0, round(10 * ramp * pm10)))


class DetectorUART(FakeUART):
    def __init__(self, board: SimBoard, rxbuf: int = 4096) -> None:
        super().__init__(board, rxbuf)
        self.polled = False

    def write(self, data: bytes) -> int:
        self.polled = True
        return len(data)

    def read(self, n: int = -1) -> bytes | None:
        b = self.board
        now = b.clock.now_us()
        dt = (now - self.last_us) / US
        self.last_us = now
        if b.faults.broken_sensor:
            return None  # detector silent: capture 0, counts null
        t = now / US
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


def _nack() -> OSError:
    return OSError(19, "ENODEV")  # what MicroPython's I2C raises when the device does not acknowledge


class FakeI2C:
    """SHT3x at 0x44, SCD4x at 0x62 and (with no2_adc ads1115) an ADS1115 at 0x48, with their timing."""

    SHT_CONV_US = 12_500   # single shot, high repeatability: 12.5 ms typical, 15.5 ms max
    SCD_PERIOD_US = 5 * US
    SCD_EXEC_US = 1000
    SCD_STOP_US = 500_000
    ADS_CONV_US = 7_813    # 128 SPS

    def __init__(self, board: SimBoard, *args: object, **kw: object) -> None:
        self.board = board
        self.sht_ready_us: int | None = None  # conversion done at; None: nothing to read
        self.scd_cmd = (0, 0)  # (command, written at)
        self.scd_started_us: int | None = None
        self.scd_busy_until = 0
        self.scd_read_n = 0  # measurements read so far since start
        self.ads_cfg = 0
        self.ads_reg = 0
        self.ads_done_us = 0
        self.ads_conv = 0

    def _now(self) -> int:
        return self.board.clock.now_us()

    def writeto(self, addr: int, data: bytes) -> int:
        now = self._now()
        if addr == sensirion.SHT3X_ADDR:
            if (data[0] << 8 | data[1]) == sensirion.SHT3X_MEASURE:
                self.sht_ready_us = now + self.SHT_CONV_US
            return len(data)
        if addr == sensirion.SCD4X_ADDR:
            cmd = data[0] << 8 | data[1]
            if now < self.scd_busy_until:
                raise _nack()
            measuring = self.scd_started_us is not None
            if cmd == sensirion.SCD4X_START:
                if measuring:
                    raise _nack()  # already in periodic mode (a warm reset)
                self.scd_started_us = now
                self.scd_read_n = 0
            elif cmd == sensirion.SCD4X_STOP:
                self.scd_started_us = None
                self.scd_busy_until = now + self.SCD_STOP_US
            elif cmd not in (sensirion.SCD4X_READ, sensirion.SCD4X_READY):
                raise _nack()
            self.scd_cmd = (cmd, now)
            return len(data)
        if addr == ads1115.ADDR and self.board.pins.get("no2_adc") == "ads1115":
            self.ads_reg = data[0]
            if data[0] == ads1115.REG_CONFIG and len(data) == 3:
                self.ads_cfg = data[1] << 8 | data[2]
                if self.ads_cfg & ads1115.OS:
                    self.ads_done_us = now + self.ADS_CONV_US
                    ch = (self.ads_cfg >> 12 & 7) - 4
                    self.ads_next = self.board.electrode_uv(ch, now) + round(self.board.rng.gauss(0, 8))
            return len(data)
        raise _nack()

    def _scd_new(self, now: int) -> bool:
        if self.scd_started_us is None:
            return False
        return (now - self.scd_started_us) // self.SCD_PERIOD_US > self.scd_read_n

    def readfrom_into(self, addr: int, buf: bytearray) -> None:
        b = self.board
        now = self._now()
        t = now / US
        temp, rh, _ = b.site.weather(t)
        traw = max(0, min(65535, round((temp + 45) * 65535 / 175)))
        hraw = max(0, min(65535, round(rh * 65535 / 100)))
        if addr == sensirion.SHT3X_ADDR:
            if self.sht_ready_us is None or now < self.sht_ready_us:
                raise _nack()  # converting (or never asked): the datasheet's NACK
            self.sht_ready_us = None
            data = sensirion.pack([traw, hraw])
        elif addr == sensirion.SCD4X_ADDR:
            cmd, at = self.scd_cmd
            if now - at < self.SCD_EXEC_US:
                raise _nack()
            if cmd == sensirion.SCD4X_READY:
                data = sensirion.pack([0x8006 if self._scd_new(now) else 0x8000])
            elif cmd == sensirion.SCD4X_READ:
                if not self._scd_new(now):
                    raise _nack()  # no new measurement in the buffer
                assert self.scd_started_us is not None
                self.scd_read_n = (now - self.scd_started_us) // self.SCD_PERIOD_US
                data = sensirion.pack([round(b.site.co2(t) + b.rng.gauss(0, 5)), traw, hraw])
            else:
                raise _nack()
            self.scd_cmd = (0, 0)
        elif addr == ads1115.ADDR and b.pins.get("no2_adc") == "ads1115":
            if now >= self.ads_done_us and self.ads_cfg & ads1115.OS:
                self.ads_conv = max(-32768, min(32767, round(self.ads_next * 32768 / ads1115.FS_UV)))
                self.ads_cfg &= ~ads1115.OS
            if self.ads_reg == ads1115.REG_CONFIG:
                v = self.ads_cfg | (ads1115.OS if now >= self.ads_done_us else 0)
            else:
                v = self.ads_conv & 0xFFFF  # the last finished conversion
            data = bytes((v >> 8, v & 0xFF))
        else:
            raise _nack()
        buf[:] = data[: len(buf)]


class FakeADC:
    """An ESP32 ADC1 pin at 11 dB: read_uv() as MicroPython's calibrated read, which still shows the
    ADC's nonlinearity (a few mV) and its noise (~12 mV rms per read)."""

    ATTN_11DB = 3

    def __init__(self, board: SimBoard, pin: FakePin, **kw: object) -> None:
        self.board = board
        self.pin = pin.n

    def read_uv(self) -> int:
        b = self.board
        ch = 1 if self.pin == b.pins.get("no2_ae", 35) else 0
        v = b.electrode_uv(ch, b.clock.now_us())
        mv = v / 1000
        bend = 6.0 * math.sin(mv / 410.0)  # residual nonlinearity after the eFuse calibration, mV
        return round(v + 1000 * (bend + b.rng.gauss(0, 12.0)))


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
        self.boot_us = clock.now_us()
        self.rtc_us = EPOCH_2000 * US - self.boot_us  # RTC = virtual time + this (an RTC from 2000-01-01)
        self.boots = 0
        self.ntp_answer: Callable[[bytes, int], bytes | None] | None = None
        """Tests: replaces the time server's answer (request, true time in us) -> reply or None."""
        self.wdt: FakeWDT | None = None
        self._wlan: FakeWLAN = FakeWLAN(self)
        self.machine = self._machine()
        self.network = types.SimpleNamespace(STA_IF=0)  # present: the node has Wi-Fi (see wlan())

    def _machine(self) -> types.SimpleNamespace:
        """Present, so the firmware knows it has hardware; the parts come from the methods below."""
        return types.SimpleNamespace(reset=self.reset)

    def chip(self) -> str:
        return "esp32"

    def uart(self, uid: int, baudrate: int, tx: int, rx: int, rxbuf: int) -> FakeUART:
        if self.kit != "air":
            return DetectorUART(self, rxbuf)
        return SDSUART(self, rxbuf) if self.pins.get("pm") == "sds011" else PMSUART(self, rxbuf)

    def i2c(self, scl: int, sda: int, freq: int = 100000) -> FakeI2C:
        return FakeI2C(self)

    def adc(self, pin: int) -> FakeADC:
        return FakeADC(self, FakePin(pin))

    def pin(self, n: int) -> FakePin:
        return FakePin(n)

    def electrode_uv(self, ch: int, t_us: int) -> int:
        """The NO2 cell's working (0) or auxiliary (1) electrode voltage that the driver turns back into the city's NO2."""
        t = t_us / US
        cal = {**no2.DEFAULT_CAL, **self.cal}
        temp, _, _ = self.site.weather(t)
        ae = cal["ae0"] + 4.0 + 0.3 * math.sin(t / 900)
        if ch == 1:
            return round(ae * 1000)
        ppb = self.site.no2(t) / 1.88
        we = cal["we0"] + ppb * cal["sens"] + no2.n_of_t(cal["n_t"], temp) * (ae - cal["ae0"])
        return round(we * 1000)

    def power_on(self) -> None:
        """A (re)boot: the RTC starts again from 2000-01-01 until NTP (or the firmware) sets it."""
        self.boot_us = self.clock.now_us()
        self.rtc_us = EPOCH_2000 * US - self.boot_us
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
        return (self.clock.now_us() + self.rtc_us) // 1000

    def set_time(self, t_ms: int) -> None:
        """The RTC keeps whole milliseconds of offset, so a deadline computed in ms is met to the ms."""
        self.rtc_us = round((t_ms * 1000 - self.clock.now_us()) / 1000) * 1000

    @property
    def synced(self) -> bool:
        """The RTC shows true time (to the millisecond): NTP has set it."""
        return abs(self.rtc_us) < 1000

    def ticks_ms(self) -> int:
        return (self.clock.now_us() - self.boot_us) // 1000

    async def sleep_ms(self, ms: float) -> None:
        await self.clock.sleep(ms / 1000)

    def randbits(self, n: int) -> int:
        return self.rng.getrandbits(n)

    def wlan(self) -> FakeWLAN:
        self._wlan.active(True)
        return self._wlan

    async def open_connection(self, host: str, port: int,
                              ssl: object = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.faults.wifi_down:
            raise OSError(113, "EHOSTUNREACH")
        if ssl is None:
            return await asyncio.open_connection(host, port)
        return await asyncio.open_connection(host, port, ssl=ssl, server_hostname=host)

    async def udp_exchange(self, host: str, port: int, data: bytes, timeout_ms: int) -> bytes | None:
        """The city's time server, answering from the true (virtual) time at once, or not at all."""
        if self.faults.never_sync or self.faults.wifi_down or port != ntp.NTP_PORT:
            await self.sleep_ms(timeout_ms)
            return None
        now = self.clock.now_us()
        if self.ntp_answer is not None:
            return self.ntp_answer(bytes(data), now)
        return ntp_reply(bytes(data), now)

    def free_heap(self) -> int:
        return 61440 - self.index % 7 * 512

    def reset(self) -> None:
        raise Reboot()

    def watchdog(self, timeout_ms: int) -> FakeWDT:
        self.wdt = FakeWDT(timeout_ms)
        return self.wdt


def ntp_reply(request: bytes, now_us: int, stratum: int = 2, li: int = 0) -> bytes:
    """An NTP server's answer (version 4, mode 4) at true time now_us, echoing the request's transmit time."""
    s = now_us // US + ntp.NTP_UNIX
    frac = (now_us % US << 32) // US
    reply = bytearray(48)
    reply[0] = li << 6 | 4 << 3 | 4
    reply[1] = stratum
    reply[24:32] = request[40:48]
    struct.pack_into("!IIII", reply, 32, s % (1 << 32), frac, s % (1 << 32), frac)
    return bytes(reply)
