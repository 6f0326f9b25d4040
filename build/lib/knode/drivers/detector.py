# Traffic detector on UART: a side-fire radar (or magnetometer unit) that
# reports each vehicle as one ASCII line, NMEA style:
#   $KV,<dir I|O>,<speed 0.1 km/h>,<length dm>*<XOR checksum, 2 hex>\r\n
# and answers presence polls with $KP,<0|1>*CS. The checksum is the XOR of
# every character between '$' and '*'. See hardware/traffic-kit.md.
MAX_LINE = 64


def checksum(body):
    x = 0
    for b in body:
        x ^= b
    return x


def line(kind, fields):
    body = ("K" + kind + "," + ",".join(str(f) for f in fields)).encode()
    return b"$" + body + b"*" + ("%02X" % checksum(body)).encode() + b"\r\n"


class Parser:
    def __init__(self):
        self.buf = bytearray()
        self.vehicles = 0
        self.polls = 0
        self.bad_checksum = 0
        self.bad_line = 0

    def feed(self, data, on_vehicle):
        """Add UART bytes; calls on_vehicle(direction 0 in / 1 out, length_dm, speed_dkmh) per good line.
        Returns the number of presence answers seen (the detector is alive)."""
        self.buf.extend(data)
        alive = 0
        while True:
            end = self.buf.find(b"\n")
            if end < 0:
                if len(self.buf) > MAX_LINE:
                    self.bad_line += 1
                    self.buf = bytearray()
                return alive
            raw = bytes(self.buf[:end]).strip()
            self.buf = self.buf[end + 1:]
            start = raw.find(b"$")
            star = raw.rfind(b"*")
            if start < 0 or star < start or len(raw) - star != 3:
                self.bad_line += 1
                continue
            body = raw[start + 1:star]
            try:
                cs = int(raw[star + 1:], 16)
            except ValueError:
                self.bad_line += 1
                continue
            if checksum(body) != cs:
                self.bad_checksum += 1
                continue
            f = body.split(b",")
            try:
                if f[0] == b"KV" and len(f) == 4 and f[1] in (b"I", b"O"):
                    speed = int(f[2])
                    length = int(f[3])
                    if speed < 0 or speed > 3000 or length <= 0 or length > 300:
                        raise ValueError
                    self.vehicles += 1
                    on_vehicle(0 if f[1] == b"I" else 1, length, speed)
                elif f[0] == b"KP" and len(f) == 2:
                    self.polls += 1
                    alive += 1
                else:
                    raise ValueError
            except ValueError:
                self.bad_line += 1
