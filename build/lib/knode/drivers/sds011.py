# Nova Fitness SDS011 particulate sensor, UART 9600 8N1.
#
# Data frame (10 bytes): 0xAA 0xC0, PM2.5 low/high, PM10 low/high (in 0.1
# ug/m3 - already the wire scale), device id (2), checksum = low byte of the
# sum of bytes 2..7, 0xAB. No PM1 channel on this sensor.
from knode.drivers.uart_frames import FrameParser

FRAME = 10


class Parser(FrameParser):
    START = b"\xaa\xc0"
    FRAME = FRAME

    def shape_ok(self, f):
        return f[9] == 0xAB

    def checksum_ok(self, f):
        return sum(f[2:8]) & 0xFF == f[8]

    def decode(self, f):
        """(None, pm25, pm10) in 0.1 ug/m3."""
        return (None, f[2] | f[3] << 8, f[4] | f[5] << 8)


def frame(pm25_d, pm10_d, dev=0x1234):
    """A valid frame; values in 0.1 ug/m3."""
    b = bytearray(b"\xaa\xc0")
    for v in (pm25_d & 0xFF, pm25_d >> 8, pm10_d & 0xFF, pm10_d >> 8, dev >> 8, dev & 0xFF):
        b.append(v)
    b.append(sum(b[2:8]) & 0xFF)
    b.append(0xAB)
    return bytes(b)
