# Plantower PMS5003 / PMS7003 particulate sensor, UART 9600 8N1, active mode.
#
# Frame (32 bytes, big-endian): 0x42 0x4D, length 28, 13 data words, checksum
# = 16-bit sum of the 30 bytes before it. Words 4..6 are PM1/PM2.5/PM10 in
# ug/m3 at "atmospheric environment", the ones for ambient air. The parser
# resynchronises on the start bytes, so line noise costs one frame, counted.
from knode.drivers.uart_frames import FrameParser

START = b"\x42\x4d"
FRAME = 32
# Passive-mode commands (the node duty-cycles the laser with sleep/wake).
CMD_SLEEP = b"\x42\x4d\xe4\x00\x00\x01\x73"
CMD_WAKE = b"\x42\x4d\xe4\x00\x01\x01\x74"
WARMUP_S = 30  # datasheet: data are stable 30 s after wake-up
FRAME_MS = 2300  # active mode sends a frame every 2.3 s when the air is steady (fast mode: 0.2-0.8 s)


class Parser(FrameParser):
    START = START
    FRAME = FRAME

    def shape_ok(self, f):
        return (f[2] << 8 | f[3]) == FRAME - 4

    def checksum_ok(self, f):
        return sum(f[0:30]) & 0xFFFF == (f[30] << 8 | f[31])

    def decode(self, f):
        """(pm1, pm25, pm10) in 0.1 ug/m3, from the atmospheric-environment words."""
        w = [f[4 + 2 * k] << 8 | f[5 + 2 * k] for k in range(6)]
        return (w[3] * 10, w[4] * 10, w[5] * 10)


def frame(pm1, pm25, pm10):
    """A valid frame for whole ug/m3 values (tests and the simulator's fake sensor)."""
    words = [pm1, pm25, pm10, pm1, pm25, pm10] + [0] * 7
    b = bytearray(START + b"\x00\x1c")
    for w in words:
        b.append(w >> 8 & 0xFF)
        b.append(w & 0xFF)
    s = sum(b) & 0xFFFF
    b.append(s >> 8)
    b.append(s & 0xFF)
    return bytes(b)
