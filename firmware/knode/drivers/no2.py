# Electrochemical NO2 sensor (Alphasense NO2-B43F class) on an ISB board:
# working (WE) and auxiliary (AE) electrode voltages read by two ADC pins.
#
# NO2 [ppb] = ((WE - WE0) - n(T) * (AE - AE0)) / sensitivity
# with WE0/AE0 the per-sensor zero offsets (mV) and sensitivity (mV/ppb) from
# the sensor's calibration sheet, n(T) the manufacturer's temperature
# correction factor interpolated by temperature. All of it comes from the
# config's "cal" object so each node carries its own sensor's numbers.
# Output in 0.1 ug/m3 (1 ppb NO2 = 1.88 ug/m3 at 20 C, 1013 hPa).

DEFAULT_CAL = {"we0": 295.0, "ae0": 282.0, "sens": 0.228,
               # n(T) at -30..50 C in 10 C steps (NO2-B43F application note AAN 803)
               "n_t": [1.3, 1.3, 1.3, 1.3, 1.0, 0.6, 0.4, 0.2, -1.5]}


def n_of_t(table, temp_c):
    x = (temp_c + 30.0) / 10.0
    if x <= 0:
        return table[0]
    if x >= len(table) - 1:
        return table[-1]
    i = int(x)
    f = x - i
    return table[i] + (table[i + 1] - table[i]) * f


def no2_d(we_mv, ae_mv, temp_c, cal):
    """NO2 in 0.1 ug/m3 (can be slightly negative near zero, the contract allows it)."""
    c = DEFAULT_CAL
    we0 = cal.get("we0", c["we0"])
    ae0 = cal.get("ae0", c["ae0"])
    sens = cal.get("sens", c["sens"])
    n = n_of_t(cal.get("n_t", c["n_t"]), 20.0 if temp_c is None else temp_c)
    ppb = ((we_mv - we0) - n * (ae_mv - ae0)) / sens
    return int(round(ppb * 18.8))


OVERSAMPLE = 64  # ESP32 ADC reads per electrode and sample: its noise is tens of mV, 1 mV is ~4.4 ppb


class Esp32Input:
    """An electrode on an ESP32 ADC1 pin: the mean of OVERSAMPLE calibrated reads (read_uv applies
    the chip's eFuse calibration; raw read()/read_u16() would add the ADC's nonlinearity)."""

    def __init__(self, adc, reads=OVERSAMPLE):
        self.adc = adc
        self.reads = reads

    async def read_uv(self):
        s = 0
        for _ in range(self.reads):
            s += self.adc.read_uv()
        return s // self.reads


class NO2:
    def __init__(self, we, ae, cal):
        """we, ae: electrode inputs with async read_uv() (Esp32Input, or ads1115.Channel)."""
        self.we = we
        self.ae = ae
        self.cal = cal
        self.errors = 0

    async def read(self, temp_d):
        """temp_d: temperature in 0.1 C for the correction (None: 20 C assumed)."""
        try:
            we = await self.we.read_uv() / 1000.0
            ae = await self.ae.read_uv() / 1000.0
        except OSError:
            self.errors += 1
            return None
        v = no2_d(we, ae, None if temp_d is None else temp_d / 10.0, self.cal)
        if v < -1000 or v > 20000:
            self.errors += 1  # outside the contract's range: a broken cell, not air
            return None
        return v
