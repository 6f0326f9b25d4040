"""MicroPython's asyncio stream semantics, modelled for CPython tests of knode.mqtt.

CPython's StreamWriter buffers without limit and close() closes; MicroPython's asyncio.Stream does
neither, and knode.mqtt must be right on MicroPython:

* write(buf) hands buf to the socket at once; what the socket does not take (its send buffer is
  full) is kept in out_buf, and drain() writes out_buf piece by piece as the socket becomes writable,
  then clears it. Two tasks in drain() at once both send out_buf: bytes go out twice.
* close() does nothing; wait_closed() closes the socket.

`Wire` is the socket's far end: it takes at most `window` bytes, then is writable again on the next
loop iteration (the peer read them). `data` is every byte that left, in order.
"""

from __future__ import annotations

import asyncio


class Wire:
    def __init__(self, window: int = 64, answer: bytes = b"") -> None:
        self.window = window
        self.data = bytearray()
        self.free = window
        self.inbox = bytearray(answer)
        self.closed = False
        self.stall = False
        """True: the peer stops reading (a TLS handshake or a TCP window that never moves)."""

    def write(self, buf: bytes) -> int:
        if self.closed:
            raise OSError(9, "EBADF")
        n = min(len(buf), self.free)
        self.data += bytes(buf[:n])
        self.free -= n
        return n

    async def writable(self) -> None:
        while self.stall or not self.free:
            if not self.stall:
                self.free = self.window
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)


class MpStream:
    """Reader and writer at once, like MicroPython's asyncio.Stream."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.out_buf = b""

    def write(self, buf: bytes) -> None:
        if not self.out_buf:
            n = self.wire.write(buf)
            if n == len(buf):
                return
            buf = bytes(buf[n:])
        self.out_buf += bytes(buf)

    async def drain(self) -> None:
        if not self.out_buf:
            await asyncio.sleep(0)
            return
        mv = memoryview(self.out_buf)
        off = 0
        while off < len(mv):
            await self.wire.writable()
            off += self.wire.write(mv[off:])
        self.out_buf = b""

    async def readexactly(self, n: int) -> bytes:
        while len(self.wire.inbox) < n:
            if self.wire.closed:
                raise EOFError
            await asyncio.sleep(0.001)
        out = bytes(self.wire.inbox[:n])
        del self.wire.inbox[:n]
        return out

    def close(self) -> None:
        pass  # MicroPython: nothing happens here

    async def wait_closed(self) -> None:
        self.wire.closed = True


class MpBoard:
    """A board whose open_connection gives MicroPython streams over Wires (one per connection)."""

    def __init__(self, window: int = 64, connack: bytes = b"\x20\x02\x00\x00", stall: bool = False) -> None:
        self.window = window
        self.connack = connack
        self.stall = stall
        self.wires: list[Wire] = []

    async def open_connection(self, host: str, port: int, ssl: object = None) -> tuple[MpStream, MpStream]:
        w = Wire(0, b"") if self.stall else Wire(self.window, self.connack)
        w.stall = self.stall
        self.wires.append(w)
        s = MpStream(w)
        return s, s


def packets(data: bytes) -> list[bytes]:
    """Split an MQTT byte stream into packets; AssertionError if it is not one."""
    out = []
    pos = 0
    while pos < len(data):
        start = pos
        pos += 1
        n = shift = 0
        while True:
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
        assert data[start] >> 4 in (1, 3, 4, 8, 12, 14), f"no MQTT packet type at byte {start}: {data[start]:#x}"
        assert pos + n <= len(data), "stream ends inside a packet"
        out.append(bytes(data[start:pos + n]))
        pos += n
    return out
