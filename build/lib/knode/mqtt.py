# kerbside node firmware - a small asyncio MQTT 3.1.1 client.
#
# Why our own: umqtt is blocking (one stuck PUBACK stalls sampling), and the
# node needs exactly QoS0/1 publish, one subscription, a retained Last Will
# and bounded waits everywhere. asyncio.open_connection exists on MicroPython
# and CPython, so the simulator runs this very code against a real broker.
# open_connection resolves the host name on every call: DNS is re-resolved on
# each reconnect without extra code.
import asyncio

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x82
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0
MAX_INCOMING = 16384  # bytes; bigger packets are a broken or hostile peer
CONNACK_ERRORS = ("", "bad protocol", "client id rejected", "server unavailable",
                  "bad user name or password", "not authorised")


class MQTTError(OSError):
    pass


def _str(buf, s):
    b = s.encode() if isinstance(s, str) else bytes(s)
    buf.append(len(b) >> 8)
    buf.append(len(b) & 0xFF)
    buf.extend(b)


def _packet(first, body):
    out = bytearray()
    out.append(first)
    n = len(body)
    while True:
        d = n & 0x7F
        n >>= 7
        out.append(d | 0x80 if n else d)
        if not n:
            break
    out.extend(body)
    return out


def connect_packet(client_id, user, password, keepalive, will, clean):
    body = bytearray(b"\x00\x04MQTT\x04")
    flags = 0x02 if clean else 0
    if will:
        flags |= 0x04 | (1 << 3) | (0x20 if will[2] else 0)  # will QoS 1
    if user:
        flags |= 0x80
    if password:
        flags |= 0x40
    body.append(flags)
    body.append(keepalive >> 8)
    body.append(keepalive & 0xFF)
    _str(body, client_id)
    if will:
        _str(body, will[0])
        _str(body, will[1])
    if user:
        _str(body, user)
    if password:
        _str(body, password)
    return _packet(CONNECT, body)


def publish_packet(topic, payload, qos, retain, pid, dup=False):
    body = bytearray()
    _str(body, topic)
    if qos:
        body.append(pid >> 8)
        body.append(pid & 0xFF)
    body.extend(payload)
    return _packet(PUBLISH | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0), body)


class MQTTClient:
    def __init__(self, client_id, user=None, password=None, keepalive=60, will=None, clean=False,
                 on_message=None, timeout=10, ssl=None):
        """will: (topic, payload, retain) published by the broker if we vanish.
        timeout: seconds any single wait on the broker may take (CONNACK, PUBACK, SUBACK, PINGRESP)."""
        self.client_id = client_id
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.will = will
        self.clean = clean
        self.on_message = on_message
        self.timeout = timeout
        self.ssl = ssl
        self._r = None
        self._w = None
        self._pid = 0
        self._waiting = {}  # packet id -> Event, for PUBACK/SUBACK
        self._pong = None
        self._tasks = []
        self.connected = False
        self.session_present = False

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    async def connect(self, host, port):
        self.close()
        if self.ssl:
            coro = asyncio.open_connection(host, port, ssl=self.ssl)
        else:
            coro = asyncio.open_connection(host, port)
        self._r, self._w = await asyncio.wait_for(coro, self.timeout)
        try:
            await self._send(connect_packet(self.client_id, self.user, self.password, self.keepalive,
                                            self.will, self.clean))
            first, body = await asyncio.wait_for(self._read_packet(), self.timeout)
        except Exception:
            self.close()
            raise
        if first != CONNACK or len(body) != 2:
            self.close()
            raise MQTTError("expected CONNACK")
        if body[1]:
            self.close()
            rc = body[1]
            raise MQTTError("connection refused: " + (CONNACK_ERRORS[rc] if rc < len(CONNACK_ERRORS) else str(rc)))
        self.session_present = bool(body[0] & 1)
        self.connected = True
        self._tasks = [asyncio.create_task(self._reader()), asyncio.create_task(self._pinger())]

    async def _send(self, data):
        w = self._w
        if w is None:
            raise MQTTError("not connected")
        w.write(data)
        await w.drain()

    async def _read_packet(self):
        r = self._r
        if r is None:
            raise MQTTError("not connected")
        hdr = await r.readexactly(1)
        n = 0
        shift = 0
        while True:
            b = (await r.readexactly(1))[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTError("bad remaining length")
        if n > MAX_INCOMING:
            raise MQTTError("packet too large")
        body = await r.readexactly(n) if n else b""
        return hdr[0], body

    async def _reader(self):
        try:
            while True:
                first, body = await self._read_packet()
                kind = first & 0xF0
                if kind == PUBACK or kind == SUBACK:
                    w = self._waiting.pop((body[0] << 8) | body[1], None)
                    if w is not None:
                        w[1] = True
                        w[0].set()
                elif kind == PINGRESP:
                    if self._pong is not None:
                        self._pong.set()
                elif kind == PUBLISH:
                    await self._incoming(first, body)
        except Exception:
            pass
        self._lost()

    async def _incoming(self, first, body):
        tl = (body[0] << 8) | body[1]
        topic = bytes(body[2:2 + tl]).decode()
        pos = 2 + tl
        qos = (first >> 1) & 3
        if qos:
            pid = body[pos:pos + 2]
            pos += 2
            await self._send(b"\x40\x02" + bytes(pid))
        if self.on_message is not None:
            try:
                self.on_message(topic, bytes(body[pos:]))
            except Exception:
                pass  # a bad command must not take the connection down

    async def _pinger(self):
        try:
            while self.connected:
                await asyncio.sleep(self.keepalive / 2)
                await self.ping()
        except Exception:
            self._lost()

    def _lost(self):
        if self.connected:
            self.close()

    def _expect(self, pid):
        w = [asyncio.Event(), False]
        self._waiting[pid] = w
        return w

    async def _wait(self, pid, w):
        try:
            await asyncio.wait_for(w[0].wait(), self.timeout)
        except asyncio.TimeoutError:
            self._waiting.pop(pid, None)
            self.close()  # the broker is not answering: reconnect and resend, do not wait forever
            raise MQTTError("no acknowledgement within %s s" % self.timeout)
        if not w[1]:
            raise MQTTError("connection lost before acknowledgement")

    async def publish(self, topic, payload, qos=1, retain=False):
        """Return once the broker holds the message (PUBACK for QoS1), or raise MQTTError."""
        if not self.connected:
            raise MQTTError("not connected")
        if not qos:
            await self._send(publish_packet(topic, payload, 0, retain, 0))
            return
        pid = self._next_pid()
        w = self._expect(pid)
        try:
            await self._send(publish_packet(topic, payload, 1, retain, pid))
        except Exception as e:
            self._waiting.pop(pid, None)
            self.close()
            raise MQTTError("send failed: %s" % e)
        await self._wait(pid, w)

    async def subscribe(self, topic, qos=1):
        pid = self._next_pid()
        w = self._expect(pid)
        body = bytearray((pid >> 8, pid & 0xFF))
        _str(body, topic)
        body.append(qos)
        await self._send(_packet(SUBSCRIBE, body))
        await self._wait(pid, w)

    async def ping(self):
        self._pong = asyncio.Event()
        await self._send(bytes((PINGREQ, 0)))
        try:
            await asyncio.wait_for(self._pong.wait(), self.timeout)
        except asyncio.TimeoutError:
            self.close()
            raise MQTTError("no PINGRESP")

    async def disconnect(self):
        """Clean goodbye: the broker discards the Last Will."""
        if self.connected:
            try:
                await self._send(bytes((DISCONNECT, 0)))
            except Exception:
                pass
        self.close()

    def close(self):
        """Drop the connection without DISCONNECT (the broker then publishes the Last Will)."""
        self.connected = False
        cur = None
        try:
            cur = asyncio.current_task()
        except Exception:
            pass
        for t in self._tasks:
            if t is not cur:
                t.cancel()
        self._tasks = []
        for w in self._waiting.values():
            w[0].set()  # waiters wake and see no acknowledgement
        self._waiting = {}
        if self._w is not None:
            try:
                self._w.close()
            except Exception:
                pass
        self._r = self._w = None
