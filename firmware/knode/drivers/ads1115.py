# TI ADS1115 16-bit ADC over I2C: the documented option for indicative-quality NO2.
#
# Why: the ESP32's own ADC has tens of mV of noise and a nonlinear curve even
# after its eFuse calibration, while 1 mV of an NO2-B43F working electrode is
# ~4.4 ppb. The ADS1115 resolves 62.5 uV at +-2.048 V. Single-shot: write the
# config register with OS=1 (start), wait one conversion (7.8 ms at 128 SPS),
# check OS reads 1 again (done), read the conversion register (signed 16 bit).
# Until a conversion finishes the conversion register still holds the previous
# one, so reading early gives a stale value, not an error: the driver checks.
ADDR = 0x48
REG_CONV = 0
REG_CONFIG = 1
PGA_2048 = 2            # +-2.048 V full scale
FS_UV = 2048000
DR_128 = 4              # 128 samples/s
CONV_MS = 8             # 1/128 s, rounded up
OS = 0x8000


def config_word(ch):
    """Single-shot, AINch against GND, +-2.048 V, 128 SPS, comparator off."""
    return OS | (4 + ch) << 12 | PGA_2048 << 9 | 0x0100 | DR_128 << 5 | 0x0003


class ADS1115:
    def __init__(self, i2c, sleep_ms, addr=ADDR):
        self.i2c = i2c
        self.sleep_ms = sleep_ms
        self.addr = addr
        self._b2 = bytearray(2)

    async def read_uv(self, ch):
        """Microvolts on channel ch (OSError on a bus error or a conversion that never ends)."""
        c = config_word(ch)
        self.i2c.writeto(self.addr, bytes((REG_CONFIG, c >> 8, c & 0xFF)))
        for _ in range(4):
            await self.sleep_ms(CONV_MS)
            self.i2c.writeto(self.addr, bytes((REG_CONFIG,)))
            self.i2c.readfrom_into(self.addr, self._b2)
            if self._b2[0] & 0x80:
                break
        else:
            raise OSError(116, "ADS1115 conversion did not finish")
        self.i2c.writeto(self.addr, bytes((REG_CONV,)))
        self.i2c.readfrom_into(self.addr, self._b2)
        raw = self._b2[0] << 8 | self._b2[1]
        if raw & 0x8000:
            raw -= 0x10000
        return raw * FS_UV // 32768


class Channel:
    """One ADS1115 input as an electrode reader (async read_uv, like no2.Esp32Input)."""

    def __init__(self, adc, ch, reads=4):
        self.adc = adc
        self.ch = ch
        self.reads = reads

    async def read_uv(self):
        s = 0
        for _ in range(self.reads):
            s += await self.adc.read_uv(self.ch)
        return s // self.reads
