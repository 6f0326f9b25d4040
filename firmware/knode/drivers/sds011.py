# Nova Fitness SDS011 particulate sensor, UART 9600 8N1.
#
# Data frame (10 bytes): 0xAA 0xC0, PM2.5 low/high, PM10 low/high (in 0.1
# ug/m3 - already the wire scale), device id (2), checksum = low byte of the
# sum of bytes 2..7, 0xAB. No PM1 channel on this sensor.
FRAME = 10


class Parser:
    def __init__(self):
        self.buf = bytearray()
        self.frames = 0
        self.bad_checksum = 0
        self.resync = 0

    def feed(self, data):
        """Add UART bytes; returns the newest good reading (None, pm25, pm10) in 0.1 ug/m3, or None."""
        self.buf.extend(data)
        buf = self.buf
        out = None
        while True:
            i = buf.find(b"\xaa\xc0")
            if i < 0:
                keep = 1 if buf and buf[-1] == 0xAA else 0
                self.resync += len(buf) - keep
                self.buf = buf[len(buf) - keep:]
                return out
            if i:
                self.resync += i
                buf = buf[i:]
            if len(buf) < FRAME:
                self.buf = buf
                return out
            if buf[9] != 0xAB:
                self.resync += 2
                buf = buf[2:]
                continue
            if sum(buf[2:8]) & 0xFF != buf[8]:
                self.bad_checksum += 1
                buf = buf[2:]
                continue
            out = (None, buf[2] | buf[3] << 8, buf[4] | buf[5] << 8)
            self.frames += 1
            buf = buf[FRAME:]
            self.buf = buf


def frame(pm25_d, pm10_d, dev=0x1234):
    """A valid frame; values in 0.1 ug/m3."""
    b = bytearray(b"\xaa\xc0")
    for v in (pm25_d & 0xFF, pm25_d >> 8, pm10_d & 0xFF, pm10_d >> 8, dev >> 8, dev & 0xFF):
        b.append(v)
    b.append(sum(b[2:8]) & 0xFF)
    b.append(0xAB)
    return bytes(b)
