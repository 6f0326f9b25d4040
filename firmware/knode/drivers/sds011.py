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


def command(work):
    """Set work (True) or sleep (False) for every sensor on the line (device id FFFF), 19 bytes."""
    b = bytearray(19)
    b[0], b[1], b[2], b[3], b[4] = 0xAA, 0xB4, 6, 1, 1 if work else 0
    b[15] = b[16] = 0xFF
    b[17] = sum(b[2:17]) & 0xFF
    b[18] = 0xAB
    return bytes(b)


CMD_SLEEP = command(False)
CMD_WAKE = command(True)
WARMUP_S = 30  # fan and laser settle after waking (sensor.community practice, datasheet: 30 s)
