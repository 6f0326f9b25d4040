# kerbside node firmware - a small asyncio MQTT 3.1.1 client.
#
# Why our own: umqtt is blocking (one stuck PUBACK stalls sampling), and the
# node needs exactly QoS0/1 publish, one subscription, a retained Last Will
# and bounded waits everywhere. The board opens the connection (knode.hal:
# asyncio.open_connection on a device and under CPython, the test runner's
# TCP bridge in the WebAssembly VM), so the simulator and the VM run this very
# code against a real broker.
#
# What MicroPython's streams need that CPython's hide:
# * one writer at a time: Stream.write() keeps what the socket did not take in
#   out_buf, and two tasks draining it at once send bytes twice (a corrupt
#   MQTT stream). Every packet goes out under one lock, as mqtt_as does.
# * Stream.close() does nothing there; wait_closed() closes the socket (and
#   frees the TLS session). aclose() always awaits it, bounded.
# * no wait is unbounded: connecting (TCP, the TLS handshake inside the first
#   drain, CONNECT/CONNACK) is one bounded step, and so is every send.
# Incoming QoS1 messages are acknowledged only once the application says it
# has taken them (puback()), so a command the node could not take stays with
# the broker instead of being lost; one too large to hold is read past in
# small pieces and handed over as payload None, so it can be refused once
# instead of killing the connection on every redelivery.
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
MAX_INCOMING = 16384  # bytes of payload held in RAM; bigger messages are refused, not held
SKIP_CHUNK = 256
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
    def __init__(self, board, client_id, user=None, password=None, keepalive=60, will=None, clean=False,
                 on_message=None, timeout=10, ssl=None):
        """One per boot, reconnected as often as needed (one SSLContext, one packet-id space).
        will: (topic, payload, retain) published by the broker if we vanish.
        on_message(topic, payload, pid): payload None means too large to hold; return True once the
        message is taken (then call puback(pid) when done with it), False to leave it with the broker.
        timeout: seconds any single exchange with the broker may take."""
        self.board = board
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
        self._lock = asyncio.Lock()
        self._pid = 0
        self._waiting = {}  # packet id -> [Event, acknowledged, return code]
        self._pong = None
        self._tasks = []
        self._unacked = None  # (pid, topic, hash) of a QoS1 publish never acknowledged: resent as DUP
        self.connected = False
        self.session_present = False

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        if self._unacked is not None and self._pid == self._unacked[0]:
            self._pid = self._pid % 65535 + 1
        return self._pid

    async def connect(self, host, port):
        """TCP (and TLS), CONNECT, CONNACK: all of it within timeout, or MQTTError/OSError and closed."""
        await self.aclose()
        try:
            await asyncio.wait_for(self._connect(host, port), self.timeout)
        except asyncio.TimeoutError:
            await self.aclose()
            raise MQTTError("broker did not answer within %s s" % self.timeout)
        except BaseException:
            await self.aclose()
            raise
        self.connected = True
        self._tasks = [asyncio.create_task(self._reader())]
        if self.keepalive > 0:
            self._tasks.append(asyncio.create_task(self._pinger()))

    async def _connect(self, host, port):
        self._r, self._w = await self.board.open_connection(host, port, self.ssl)
        await self._write(connect_packet(self.client_id, self.user, self.password, self.keepalive,
                                         self.will, self.clean))
        first, n = await self._read_header()
        body = await self._read_body(n) if n <= 4 else None
        if first != CONNACK or body is None or len(body) != 2:
            raise MQTTError("expected CONNACK")
        if body[1]:
            rc = body[1]
            raise MQTTError("connection refused: " + (CONNACK_ERRORS[rc] if rc < len(CONNACK_ERRORS) else str(rc)))
        self.session_present = bool(body[0] & 1)

    # -- the wire ------------------------------------------------------------
    async def _write(self, data):
        async with self._lock:
            w = self._w
            if w is None:
                raise MQTTError("not connected")
            w.write(data)
            await w.drain()

    async def _send(self, data):
        """One packet, whole, within timeout; a send that cannot finish drops the connection."""
        try:
            await asyncio.wait_for(self._write(data), self.timeout)
        except asyncio.TimeoutError:
            await self.aclose()
            raise MQTTError("send stalled for %s s" % self.timeout)
        except MQTTError:
            raise
        except Exception as e:
            await self.aclose()
            raise MQTTError("send failed: %s" % e)

    async def _read_header(self):
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
        return hdr[0], n

    async def _read_body(self, n):
        return await self._r.readexactly(n) if n else b""

    async def _skip(self, n):
        while n:
            k = n if n < SKIP_CHUNK else SKIP_CHUNK
            await self._r.readexactly(k)
            n -= k

    async def _reader(self):
        try:
            while True:
                first, n = await self._read_header()
                kind = first & 0xF0
                if kind == PUBLISH:
                    await self._incoming(first, n)
                    continue
                if n > 64:
                    raise MQTTError("unexpected %d-byte packet 0x%02x" % (n, first))
                body = await self._read_body(n)
                if kind == PUBACK or kind == SUBACK:
                    w = self._waiting.pop((body[0] << 8) | body[1], None)
                    if w is not None:
                        w[1] = True
                        w[2] = body[2] if kind == SUBACK and len(body) > 2 else 0
                        w[0].set()
                elif kind == PINGRESP:
                    if self._pong is not None:
                        self._pong.set()
        except Exception:
            pass
        await self.aclose()

    async def _incoming(self, first, n):
        qos = (first >> 1) & 3
        head = await self._read_body(2)
        tl = (head[0] << 8) | head[1]
        if tl > 256 or tl + 2 > n:
            raise MQTTError("bad topic length")
        topic = bytes(await self._read_body(tl)).decode()
        left = n - 2 - tl
        pid = 0
        if qos:
            p = await self._read_body(2)
            pid = (p[0] << 8) | p[1]
            left -= 2
        payload = None
        if left <= MAX_INCOMING:
            try:
                payload = await self._read_body(left)
                left = 0
            except MemoryError:
                payload = None  # nothing of it was read: step over it in small pieces
        await self._skip(left)
        auto = self.on_message is None
        if not auto:
            try:
                self.on_message(topic, None if payload is None else bytes(payload), pid)
            except Exception:
                auto = True  # a message that breaks the handler must not come back on every reconnect
            payload = None
        if qos and auto:
            await self.puback(pid)
        # taken: the application calls puback() when done; not taken: the broker keeps it for the next connection

    async def puback(self, pid):
        """The application is done with incoming QoS1 message pid: the broker may forget it."""
        await self._send(bytes((PUBACK, 2, pid >> 8, pid & 0xFF)))

    async def _pinger(self):
        try:
            while self.connected:
                await asyncio.sleep(self.keepalive / 2)
                await self.ping()
        except Exception:
            await self.aclose()

    def _expect(self, pid):
        w = [asyncio.Event(), False, 0]
        self._waiting[pid] = w
        return w

    async def _wait(self, pid, w):
        try:
            await asyncio.wait_for(w[0].wait(), self.timeout)
        except asyncio.TimeoutError:
            self._waiting.pop(pid, None)
            await self.aclose()  # the broker is not answering: reconnect and resend, do not wait forever
            raise MQTTError("no acknowledgement within %s s" % self.timeout)
        if not w[1]:
            raise MQTTError("connection lost before acknowledgement")
        return w[2]

    async def publish(self, topic, payload, qos=1, retain=False):
        """Return once the broker holds the message (PUBACK for QoS1), or raise MQTTError.
        The same QoS1 message sent again after a failure keeps its packet id and has DUP set."""
        if not self.connected:
            raise MQTTError("not connected")
        if not qos:
            await self._send(publish_packet(topic, payload, 0, retain, 0))
            return
        key = (topic, len(payload), hash(bytes(payload)))
        u = self._unacked
        dup = u is not None and u[1] == key
        pid = u[0] if dup else self._next_pid()
        self._unacked = (pid, key)
        w = self._expect(pid)
        try:
            await self._send(publish_packet(topic, payload, 1, retain, pid, dup))
        except Exception:
            self._waiting.pop(pid, None)
            raise
        await self._wait(pid, w)
        self._unacked = None

    async def subscribe(self, topic, qos=1):
        """The QoS the broker granted; MQTTError if it refused the subscription (return code 0x80)."""
        pid = self._next_pid()
        w = self._expect(pid)
        body = bytearray((pid >> 8, pid & 0xFF))
        _str(body, topic)
        body.append(qos)
        await self._send(_packet(SUBSCRIBE, body))
        rc = await self._wait(pid, w)
        if rc == 0x80:
            raise MQTTError("subscription to %s refused" % topic)
        return rc

    async def ping(self):
        self._pong = asyncio.Event()
        await self._send(bytes((PINGREQ, 0)))
        try:
            await asyncio.wait_for(self._pong.wait(), self.timeout)
        except asyncio.TimeoutError:
            await self.aclose()
            raise MQTTError("no PINGRESP")

    async def disconnect(self):
        """Clean goodbye: the broker discards the Last Will."""
        if self.connected:
            try:
                await self._send(bytes((DISCONNECT, 0)))
            except Exception:
                pass
        await self.aclose()

    def _drop(self):
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
        w = self._w
        self._r = self._w = None
        if w is not None:
            try:
                w.close()
            except Exception:
                pass
        return w

    async def aclose(self):
        """Drop the connection without DISCONNECT (the broker then publishes the Last Will) and
        close the socket: on MicroPython only wait_closed() does, and with it goes the TLS session."""
        w = self._drop()
        if w is not None:
            try:
                await asyncio.wait_for(w.wait_closed(), 2)
            except Exception:
                pass

    def close(self):
        """Synchronous drop for a node that is stopping (its tasks are being cancelled): on
        CPython this closes the socket; on a device a reset follows anyway."""
        self._drop()
