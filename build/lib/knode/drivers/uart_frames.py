# kerbside node firmware - resynchronising parser for fixed-size UART sensor frames.
#
# Why one class: PM sensors stream fixed frames behind two start bytes, and a
# UART that starts mid-frame or picks up noise must cost at most the damaged
# frame, with every skipped byte and bad checksum counted for the status
# message. Each sensor says only what its frame looks like.


class FrameParser:
    START = b""  # the two start bytes
    FRAME = 0    # frame length in bytes

    def __init__(self):
        self.buf = bytearray()
        self.frames = 0
        self.bad_checksum = 0
        self.resync = 0  # bytes skipped looking for a frame start

    def shape_ok(self, f):
        """Fixed bytes besides the start (length field, end byte) look right."""
        return True

    def checksum_ok(self, f):
        raise NotImplementedError

    def decode(self, f):
        raise NotImplementedError

    def feed(self, data):
        """Add UART bytes; returns the newest good reading decoded from a frame, or None."""
        self.buf.extend(data)
        buf = self.buf
        out = None
        start, size = self.START, self.FRAME
        while True:
            i = buf.find(start)
            if i < 0:
                keep = 1 if buf and buf[-1] == start[0] else 0
                self.resync += len(buf) - keep
                self.buf = buf[len(buf) - keep:]
                return out
            if i:
                self.resync += i
                buf = buf[i:]
            if len(buf) < size:
                self.buf = buf
                return out
            if not self.shape_ok(buf):
                self.resync += 2
                buf = buf[2:]
                continue
            if not self.checksum_ok(buf):
                self.bad_checksum += 1
                buf = buf[2:]
                continue
            out = self.decode(buf)
            self.frames += 1
            buf = buf[size:]
            self.buf = buf
