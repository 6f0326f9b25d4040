# Plantower PMS5003 / PMS7003 particulate sensor, UART 9600 8N1, active mode.
#
# Frame (32 bytes, big-endian): 0x42 0x4D, length 28, 13 data words, checksum
# = 16-bit sum of the 30 bytes before it. Words 4..6 are PM1/PM2.5/PM10 in
# ug/m3 at "atmospheric environment", the ones for ambient air. The parser
# resynchronises on the start bytes, so line noise costs one frame, counted.
START = b"\x42\x4d"
FRAME = 32
# Passive-mode commands (the node duty-cycles the laser with sleep/wake).
CMD_SLEEP = b"\x42\x4d\xe4\x00\x00\x01\x73"
CMD_WAKE = b"\x42\x4d\xe4\x00\x01\x01\x74"
WARMUP_S = 30  # datasheet: data are stable 30 s after wake-up


class Parser:
    def __init__(self):
        self.buf = bytearray()
        self.frames = 0
        self.bad_checksum = 0
        self.resync = 0  # bytes skipped looking for a frame start

    def feed(self, data):
        """Add UART bytes; returns the newest good reading (pm1, pm25, pm10) in 0.1 ug/m3, or None."""
        self.buf.extend(data)
        out = None
        buf = self.buf
        while True:
            i = buf.find(START)
            if i < 0:
                keep = 1 if buf and buf[-1] == 0x42 else 0
                self.resync += len(buf) - keep
                self.buf = buf = buf[len(buf) - keep:]
                return out
            if i:
                self.resync += i
                buf = buf[i:]
            if len(buf) < FRAME:
                self.buf = buf
                return out
            if (buf[2] << 8 | buf[3]) != FRAME - 4:
                self.resync += 2
                buf = buf[2:]
                continue
            if sum(buf[0:30]) & 0xFFFF != (buf[30] << 8 | buf[31]):
                self.bad_checksum += 1
                buf = buf[2:]
                continue
            w = [buf[4 + 2 * k] << 8 | buf[5 + 2 * k] for k in range(6)]
            out = (w[3] * 10, w[4] * 10, w[5] * 10)
            self.frames += 1
            buf = buf[FRAME:]
            self.buf = buf


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
