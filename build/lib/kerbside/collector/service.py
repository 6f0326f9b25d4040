"""The collector: MQTT QoS1 in, InfluxDB out, and a message is acked only once its points are durable.

Threads: paho's network thread only queues (topic, payload, mid) and never
acks (manual_ack); the decoder thread (run) decodes and cuts batches, each
with a snapshot of the sequence state; the writer thread makes each batch
durable in order (InfluxDB 2xx, or appended+fsynced to the spool; rejections
fsynced to the dead-letter store), saves that state and only then sends the
PUBACKs, while the decoder already builds the next batch. Anything unacked when the process dies is redelivered by the broker
from the persistent session, and rewriting identical points is harmless.
docs/collector.md explains the design and its failure cases.
"""

from __future__ import annotations

import logging
import queue
import random
import ssl
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kerbside.collector import batching
from kerbside.collector.decode import Rejected, decode
from kerbside.collector.devices import DeviceTags
from kerbside.collector.dlq import LINE_TOPIC, DeadLetters
from kerbside.collector.gaps import SeqTracker
from kerbside.collector.influx import InfluxWriter
from kerbside.collector.metrics import Metrics, serve
from kerbside.collector.spool import Batch, Spool, SpoolFull
from kerbside.core import contract
from kerbside.core.influx import InfluxAuthError, InfluxDown
from kerbside.core.settings import Config

log = logging.getLogger("kerbside.collector")

KINDS = ("readings", "status", "ack")


@dataclass(slots=True)
class Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int
    """MQTT connection the message came on: a mid is only meaningful to the broker on that connection."""
    received: float


@dataclass(slots=True)
class Pending:
    """A cut batch on its way to durability: lines per retention policy, its messages, rejections, sequence state."""

    lines: dict[str, list[str]]
    acks: list[Incoming]
    dead: list[tuple[str, str, str, bytes]]
    state: str | None


class Collector:
    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.metrics = Metrics()
        self.writer = InfluxWriter(cfg.influx)
        self.spool = Spool(cfg.spool.dir, cfg.spool.max_bytes, cfg.spool.warn_ratio)
        self.dlq = DeadLetters(cfg.dlq_dir)
        self.tracker = SeqTracker(cfg.state_dir / "sequences.json")
        self.devices = DeviceTags(cfg.registry.path or None)
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        self._pipe: queue.Queue[Pending | None] = queue.Queue(maxsize=2)
        self._cut_count = 0
        """Batches cut (decoder thread only) and committed or abandoned (writer thread only)."""
        self._done_count = 0
        self._cut_msgs = 0
        self._done_msgs = 0
        self.stopping = threading.Event()
        self.failed = False
        """Set when the writer hit an unexpected error: the process should exit non-zero (and be restarted)."""
        self.stopped = threading.Event()
        self.generation = 0
        self._conn_lock = threading.Lock()
        self.connected = False
        self.subscribed = False
        self.online: dict[str, dict[str, Any]] = {}
        self.influx_up: bool | None = None
        self._down_until = 0.0
        self._backoff = 0.0
        self._full_logged = 0.0
        self._http: ThreadingHTTPServer | None = None
        self.client = self._make_client()
        # the batch being built
        self._lines: dict[str, list[str]] = defaultdict(list)
        self._nlines = 0
        self._acks: list[Incoming] = []
        self._dead: list[tuple[str, str, str, bytes]] = []
        self._batch_start = 0.0
        self._describe()

    # --- setup -------------------------------------------------------------------
    def _describe(self) -> None:
        """Every metric the collector exposes; the spool's and the tracker's are read from them at scrape time."""
        m = self.metrics
        t, sp = self.tracker, self.spool
        for name, kind, text, labels, read in (
            ("kerbside_messages_total", "counter", "MQTT messages taken from the broker, by kind", ("kind",), None),
            ("kerbside_readings_total", "counter", "valid readings decoded (durable once acked)", (), None),
            ("kerbside_seq_resets_total", "counter", "sequence jumps too large to be gaps (reflashed or replaced nodes)",
             (), lambda: t.resets),
            ("kerbside_rejected_total", "counter", "messages and lines dead-lettered, by stable reason code", ("reason",), None),
            ("kerbside_duplicates_total", "counter", "readings whose sequence number was already seen (replays)",
             (), lambda: t.duplicates),
            ("kerbside_gaps_opened_total", "counter", "sequence gaps detected", (), lambda: t.gaps_opened),
            ("kerbside_gaps_open", "gauge", "gaps not yet filled by backfill", (), t.open_gaps),
            ("kerbside_readings_missing", "gauge", "readings missing in open gaps", (), t.missing),
            ("kerbside_lines_written_total", "counter", "lines InfluxDB accepted (direct and from the spool)", (), None),
            ("kerbside_lines_spooled_total", "counter", "lines appended to the spool because InfluxDB could not take them",
             (), None),
            ("kerbside_spool_bytes", "gauge", "bytes waiting in the spool", (), lambda: sp.bytes),
            ("kerbside_spool_max_bytes", "gauge", "spool capacity", (), lambda: sp.max_bytes),
            ("kerbside_spool_batches", "gauge", "batches waiting in the spool", (), lambda: len(sp)),
            ("kerbside_spool_blocked", "gauge", "1 while the spool is full and the collector has stopped acking", (), None),
            ("kerbside_influx_up", "gauge", "1 when the last InfluxDB write succeeded", (), lambda: int(self.influx_up is True)),
            ("kerbside_mqtt_connected", "gauge", "1 while connected to the broker", (), lambda: int(self.connected)),
            ("kerbside_mqtt_subscribed", "gauge", "1 once the broker accepted our subscriptions", (),
             lambda: int(self.subscribed)),
            ("kerbside_flushes_total", "counter", "batches made durable", (), None),
            ("kerbside_unacked_messages", "gauge", "messages received but not yet durable/acked", (), self.unacked),
            ("kerbside_device_online", "gauge", "online/offline view from retained status and last wills", ("device",), None),
            ("kerbside_internal_errors_total", "counter", "bugs: exceptions outside the decoder's contract", (), None),
        ):
            m.describe(name, kind, text, labels, read)

    def _make_client(self) -> mqtt.Client:
        c = self.cfg.mqtt
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=c.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        if c.username:
            client.username_pw_set(c.username, c.password or None)
        if c.url.startswith("mqtts://"):
            client.tls_set(ca_certs=c.ca_file or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(1, 30)
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_connect_fail = self._on_connect_fail
        return client

    def topics(self) -> list[str]:
        prefix = f"$share/{self.cfg.mqtt.group}/" if self.cfg.mqtt.group else ""
        return [f"{prefix}{contract.PREFIX}+/{kind}" for kind in KINDS]

    # --- MQTT callbacks (network thread: no blocking, no acks) ---------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s (check mqtt.username/password and the ACL)", reason)
            return
        with self._conn_lock:
            self.generation += 1
        self.connected = True
        log.info("connected to %s (session present: %s)", self.cfg.mqtt.url, flags.session_present)
        client.subscribe([(t, 1) for t in self.topics()])

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        log.warning("cannot reach the broker at %s; retrying (check mqtt.url and that mosquitto runs)", self.cfg.mqtt.url)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: Any, properties: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            log.error("broker refused subscriptions %s: %s (check the ACL for the collector's user)", self.topics(), failed)
        self.subscribed = not failed

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any, properties: Any) -> None:
        self.connected = False
        self.subscribed = False
        with self._conn_lock:
            self.generation += 1
        if not self.stopping.is_set():
            log.warning("disconnected from the broker (%s); reconnecting, unacked messages will be redelivered", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put(Incoming(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self.generation, time.monotonic()))

    # --- handling ------------------------------------------------------------------
    def handle(self, item: Incoming) -> None:
        """Decode one message into the current batch or the dead letters. Never raises."""
        topic, payload = item.topic, item.payload
        kind = topic.rsplit("/", 1)[-1] if topic.startswith(contract.PREFIX) else "invalid"
        self.metrics.inc("kerbside_messages_total", kind=kind if kind in KINDS else "invalid")
        if not self._acks and not self._dead:
            self._batch_start = time.monotonic()
        self._acks.append(item)
        try:
            m = contract.TOPIC_RE.match(topic)
            tags = self.devices.tags_for(m.group(1)) if m else None
            d = decode(topic, payload, self.clock(), tags)
        except Rejected as e:
            self._reject(topic, e.reason, e.detail, payload)
            return
        except Exception as e:  # a decoder bug must not stop the service or lose the message
            log.exception("internal error decoding %s", topic)
            self.metrics.inc("kerbside_internal_errors_total")
            self._reject(topic, "bad_structure", f"internal error: {type(e).__name__}: {e}"[:300], payload)
            return
        if d.kind == "readings":
            rp = self.cfg.influx.rp if d.synced else self.cfg.influx.unsynced_rp
            # In a shared group this member sees part of each stream: `kerbside gaps scan` finds gaps instead.
            gap_lines = [] if self.cfg.mqtt.group else self.tracker.observe(d.device, d.seq, d.count, d.t0, d.period,
                                                                            tags or {})
            self._add(rp, d.lines + gap_lines)
            self.metrics.inc("kerbside_readings_total", d.count)
        else:
            self._add(self.cfg.influx.rp, d.lines)
            if d.kind == "status":
                self.online[d.device] = {"online": bool(d.online), "since": self.clock(), **(tags or {})}
                self.metrics.set("kerbside_device_online", 1 if d.online else 0, device=d.device)

    def _reject(self, topic: str, reason: str, detail: str, payload: bytes) -> None:
        self._dead.append((topic, reason, detail, payload))
        self.metrics.inc("kerbside_rejected_total", reason=reason)

    def _add(self, rp: str, lines: list[str]) -> None:
        self._lines[rp].extend(lines)
        self._nlines += len(lines)

    def due(self) -> bool:
        return batching.due(self._nlines, len(self._acks), time.monotonic() - self._batch_start, self.cfg.batch)

    # --- durability ------------------------------------------------------------------
    def _cut(self) -> Pending | None:
        """Take the batch being built, with the sequence state as of its last message."""
        if not self._acks:
            return None
        self._cut_count += 1  # before _acks empties, so idle() never sees a batch in neither place
        self._cut_msgs += len(self._acks)
        p = Pending(dict(self._lines), self._acks, self._dead, self.tracker.snapshot() if self.tracker.dirty else None)
        self._lines = defaultdict(list)
        self._nlines = 0
        self._acks = []
        self._dead = []
        return p

    def _commit(self, p: Pending) -> bool:
        """Make a batch durable, then ack its messages. False if it could not (spool full while stopping)."""
        if p.dead:
            self.dlq.add_many(p.dead, self.clock())
        for rp, lines in p.lines.items():
            if lines and not self._persist(Batch(rp, lines)):
                return False
        if p.state is not None:
            self.tracker.write(p.state)
        with self._conn_lock:  # no reconnect between checking the connection and sending its acks
            gen = self.generation
            for item in p.acks:
                if item.generation == gen and item.qos > 0:
                    self.client.ack(item.mid, item.qos)
        self.metrics.inc("kerbside_flushes_total")
        return True

    def flush(self) -> bool:
        """Make the current batch durable and ack it, in the calling thread."""
        p = self._cut()
        if p is None:
            return True
        ok = self._commit(p)
        self._done_count += 1
        self._done_msgs += len(p.acks)
        return ok

    def unacked(self) -> int:
        """Messages decoded but not yet durable and acked (excluding the inbox)."""
        return len(self._acks) + self._cut_msgs - self._done_msgs

    def idle(self) -> bool:
        """Nothing decoded that is not yet durable and acked (for tests)."""
        return not self._acks and self._cut_count == self._done_count

    def _persist(self, batch: Batch) -> bool:
        """Write to InfluxDB directly, or to the spool when InfluxDB is down or the spool still holds older data."""
        if len(self.spool) and time.monotonic() >= self._down_until:
            self.drain()  # older data first; under sustained load this is where the spool drains
        if len(self.spool) == 0 and time.monotonic() >= self._down_until:
            try:
                self._write(batch)
                return True
            except InfluxDown as e:
                self._mark_down(e)
        while True:
            try:
                self.spool.append(batch)
                self.metrics.inc("kerbside_lines_spooled_total", len(batch.lines))
                self.metrics.set("kerbside_spool_blocked", 0)
                return True
            except SpoolFull as e:
                if time.monotonic() - self._full_logged > 30:
                    self._full_logged = time.monotonic()
                    log.error("%s; not acking, the broker queues meanwhile. Bring InfluxDB back or raise spool.max_bytes", e)
                self.metrics.set("kerbside_spool_blocked", 1)
                if self.stopping.is_set():
                    return False
                self.drain(block=True)


    def _write(self, batch: Batch) -> None:
        bad = self.writer.write(batch.lines, batch.rp)
        if bad:
            self.dlq.add_many([(LINE_TOPIC, "influx_rejected", err, line.encode()) for line, err in bad], self.clock())
            self.metrics.inc("kerbside_rejected_total", len(bad), reason="influx_rejected")
            log.warning("InfluxDB refused %d of %d lines (dead-lettered): %s", len(bad), len(batch.lines), bad[0][1])
        self.metrics.inc("kerbside_lines_written_total", len(batch.lines) - len(bad))
        if self.influx_up is not True:
            log.info("InfluxDB takes writes%s", f"; replaying {len(self.spool)} spooled batches" if len(self.spool) else "")
        self.influx_up = True
        self._backoff = 0.0

    def _mark_down(self, e: InfluxDown) -> None:
        lo, hi = self.cfg.spool.backoff_min_s, self.cfg.spool.backoff_max_s
        self._backoff = min(hi, max(lo, self._backoff * 2))
        self._down_until = time.monotonic() + self._backoff * random.uniform(0.5, 1.0)
        level = logging.ERROR if isinstance(e, InfluxAuthError) or self.influx_up is not False else logging.DEBUG
        log.log(level, "InfluxDB unavailable (%s); spooling, next try in %.1f s", e, self._down_until - time.monotonic())
        self.influx_up = False

    def drain(self, block: bool = False) -> None:
        """Replay spooled batches oldest first while InfluxDB takes them; block=True waits out the backoff once."""
        if block and time.monotonic() < self._down_until:
            self.stopping.wait(max(0.0, self._down_until - time.monotonic()))
        deadline = time.monotonic() + 0.5
        while len(self.spool) and time.monotonic() >= self._down_until and time.monotonic() < deadline:
            batch = self.spool.peek()
            if batch is None:
                break
            try:
                self._write(batch)
            except InfluxDown as e:
                self._mark_down(e)
                break
            self.spool.pop()

    # --- main loop -------------------------------------------------------------------
    def connect(self) -> None:
        u = urllib.parse.urlsplit(self.cfg.mqtt.url)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.mqtt.session_expiry_s
        props.ReceiveMaximum = self.cfg.mqtt.receive_maximum
        self.client.connect_async(u.hostname or "127.0.0.1", u.port or (8883 if u.scheme == "mqtts" else 1883),
                                  keepalive=self.cfg.mqtt.keepalive_s, clean_start=False, properties=props)
        self.client.loop_start()

    def start_http(self) -> None:
        if self.cfg.http.port:
            self._http = serve(self.cfg.http.host, self.cfg.http.port, self.render_metrics, self.health)
            log.info("metrics on http://%s:%d/metrics, health on /healthz", self.cfg.http.host, self.cfg.http.port)

    def _writer_loop(self) -> None:
        """Commits batches in order while the decoder builds the next one; replays the spool when idle."""
        failed = False
        while True:
            try:
                p = self._pipe.get(timeout=0.2)
            except queue.Empty:
                if len(self.spool) and not self.stopping.is_set():
                    self.drain()
                continue
            try:
                if p is None:
                    return
                if not failed:  # after a failed commit later batches must not be acked either
                    failed = not self._commit(p)
            except Exception:
                log.exception("writer failed; exiting without acking, the broker redelivers")
                failed = self.failed = True
                self.stopping.set()
            finally:
                if p is not None:
                    self._done_count += 1
                    self._done_msgs += len(p.acks)

    def run(self) -> None:
        """Until stop(): then flush what is decoded, ack it, disconnect. Returns within a bounded time."""
        try:
            self.writer.ensure_db()
            self.influx_up = True
        except InfluxAuthError:
            raise
        except InfluxDown as e:
            self._mark_down(e)
        self.start_http()
        writer = threading.Thread(target=self._writer_loop, name="writer", daemon=True)
        writer.start()
        self.connect()
        try:
            while not self.stopping.is_set():
                timeout = batching.wait_s(len(self._acks), time.monotonic() - self._batch_start, self.cfg.batch)
                try:
                    item = self.inbox.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is not None:
                    self.handle(item)
                if self._acks and (item is None or self.due()):
                    self._put(self._cut())
            self._put(self._cut())
        finally:
            self._pipe.put(None)  # the writer's signal to finish
            writer.join(60)
            self.client.disconnect()
            self.client.loop_stop()
            self.spool.close()
            self.writer.close()
            if self._http is not None:
                self._http.shutdown()
            self.stopped.set()
            log.info("stopped; %d messages left unacked for redelivery", self.inbox.qsize())

    def _put(self, p: Pending | None) -> None:
        """Hand a cut batch to the writer; blocks while it still has two (backpressure). None here is a no-op."""
        if p is not None:
            self._pipe.put(p)

    def stop(self) -> None:
        self.stopping.set()

    # --- observability ---------------------------------------------------------------------
    def render_metrics(self) -> bytes:
        return self.metrics.render()

    def health(self) -> tuple[bool, dict[str, Any]]:
        influx_ok = self.writer.ping()
        ok = self.connected and influx_ok and self.spool.fill < 1.0
        return ok, {
            "ok": ok,
            "mqtt": {"connected": self.connected, "url": self.cfg.mqtt.url},
            "influx": {"reachable": influx_ok, "last_write_ok": self.influx_up, "url": self.cfg.influx.url},
            "spool": {"bytes": self.spool.bytes, "max_bytes": self.spool.max_bytes, "batches": len(self.spool)},
            "unacked": self.unacked() + self.inbox.qsize(),
            "devices": {"online": sorted(d for d, s in list(self.online.items()) if s["online"]),
                        "offline": sorted(d for d, s in list(self.online.items()) if not s["online"])},
            "rejected": {r: int(self.metrics.get("kerbside_rejected_total", reason=r)) for r in contract.REASONS
                         if self.metrics.get("kerbside_rejected_total", reason=r)},
        }
