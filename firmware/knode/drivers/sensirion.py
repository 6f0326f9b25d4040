# Sensirion I2C sensors: SCD4x (CO2, addr 0x62) and SHT3x (T/RH, addr 0x44).
#
# Both answer with 16-bit words each followed by a CRC-8 (poly 0x31, init
# 0xFF); a word with a bad CRC is rejected and counted, never used.
from knode.crc import crc8

#
# Both need time between a command and its answer, and NACK the read until
# then (MicroPython raises OSError): the SHT3x converts for up to 15.5 ms
# after a single-shot command, the SCD4x needs 1 ms per command, 500 ms after
# stop, and has a new measurement only every 5 s in periodic mode (reading
# it again before then is NACKed). So the drivers wait on the board's clock,
# never on a fake that answers at once.

SCD4X_ADDR = 0x62
SCD4X_START = 0x21B1  # start_periodic_measurement (one reading every 5 s)
SCD4X_STOP = 0x3F86   # stop_periodic_measurement: 500 ms before the next command
SCD4X_READY = 0xE4B8  # get_data_ready_status: low 11 bits 0 = no new measurement
SCD4X_READ = 0xEC05   # read_measurement: CO2, T, RH; 1 ms execution time
SCD4X_EXEC_MS = 1
SCD4X_STOP_MS = 500
SHT3X_ADDR = 0x44
SHT3X_MEASURE = 0x2400  # single shot, high repeatability, no clock stretching
SHT3X_MEASURE_MS = 16   # datasheet: max 15.5 ms for high repeatability


class CRCError(ValueError):
    pass


def words(data, n):
    """n big-endian words from 3n bytes, each CRC-checked."""
    if len(data) < 3 * n:
        raise CRCError("truncated: %d bytes" % len(data))
    out = []
    for k in range(n):
        if crc8(data, 3 * k, 3 * k + 2) != data[3 * k + 2]:
            raise CRCError("crc mismatch in word %d" % k)
        out.append(data[3 * k] << 8 | data[3 * k + 1])
    return out


def pack(ws):
    """Bytes with CRCs for the given words (tests and fake sensors)."""
    b = bytearray()
    for w in ws:
        b.append(w >> 8)
        b.append(w & 0xFF)
        b.append(crc8(b, len(b) - 2))
    return bytes(b)


def temp_d(raw):
    """0.1 degC from the 16-bit raw value: T = -45 + 175 * raw / 65535."""
    return (-450 * 65535 + 1750 * raw + 32767) // 65535


def rh_d(raw):
    """0.1 %RH: RH = 100 * raw / 65535."""
    return (1000 * raw + 32767) // 65535


class SCD4x:
    def __init__(self, i2c, sleep_ms, addr=SCD4X_ADDR):
        self.i2c = i2c
        self.sleep_ms = sleep_ms
        self.addr = addr
        self.errors = 0
        self.started = False
        self._buf = bytearray(9)
        self._word = bytearray(3)

    def _cmd(self, c):
        self.i2c.writeto(self.addr, bytes((c >> 8, c & 0xFF)))

    async def start(self):
        """Periodic measurement; after a warm reset the sensor is still measuring and NACKs a
        second start: stop it (500 ms) and start again."""
        try:
            self._cmd(SCD4X_START)
        except OSError:
            self._cmd(SCD4X_STOP)
            await self.sleep_ms(SCD4X_STOP_MS)
            self._cmd(SCD4X_START)
        self.started = True

    async def read(self):
        """(co2 ppm, temp 0.1 C, rh 0.1 %), or None: no new measurement yet (not an error), or a
        bus or CRC error (counted)."""
        try:
            if not self.started:
                await self.start()
            self._cmd(SCD4X_READY)
            await self.sleep_ms(SCD4X_EXEC_MS)
            self.i2c.readfrom_into(self.addr, self._word)
            if not words(self._word, 1)[0] & 0x7FF:
                return None
            self._cmd(SCD4X_READ)
            await self.sleep_ms(SCD4X_EXEC_MS)
            self.i2c.readfrom_into(self.addr, self._buf)
            co2, t, rh = words(self._buf, 3)
        except (OSError, CRCError):
            self.errors += 1
            return None
        return co2, temp_d(t), rh_d(rh)


class SHT3x:
    def __init__(self, i2c, sleep_ms, addr=SHT3X_ADDR):
        self.i2c = i2c
        self.sleep_ms = sleep_ms
        self.addr = addr
        self.errors = 0
        self._buf = bytearray(6)

    async def read(self):
        """(temp 0.1 C, rh 0.1 %) or None (counted)."""
        try:
            self.i2c.writeto(self.addr, bytes((SHT3X_MEASURE >> 8, SHT3X_MEASURE & 0xFF)))
            await self.sleep_ms(SHT3X_MEASURE_MS)
            try:
                self.i2c.readfrom_into(self.addr, self._buf)
            except OSError:
                await self.sleep_ms(SHT3X_MEASURE_MS)  # still converting (a slow part, a busy bus): once more
                self.i2c.readfrom_into(self.addr, self._buf)
            t, rh = words(self._buf, 2)
        except (OSError, CRCError):
            self.errors += 1
            return None
        return temp_d(t), rh_d(rh)
