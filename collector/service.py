"""The collector: QoS1 messages in, InfluxDB out, and a message is acked only once its points are durable.

Threads: the source's network thread (collector.source: MQTT from Mosquitto, or
AMQP from a RabbitMQ cluster) only queues (topic, payload, ack token) and never
acks on its own; the decoder thread (run) decodes and cuts batches, each
with a snapshot of the sequence state; the writer thread makes each batch
durable in order (InfluxDB 2xx, or appended+fsynced to the spool; rejections
fsynced to the dead-letter store), saves that state and only then sends the
acks (PUBACK, basic.ack), while the decoder already builds the next batch.
Anything unacked when the process dies is redelivered by the broker (from the
persistent session, or from the queue to any collector), and rewriting
identical points is harmless.

When a store cannot be written (its budget reached, or the disk full, read-only
or failing) the writer keeps the batch and retries it, step by step, until it is
durable: nothing is acked meanwhile, so the broker keeps the messages, and
/healthz, the log and kerbside_storage_blocked say why. It resumes by itself
when there is room again (replaying the spool makes room when InfluxDB is up).
A thread that dies, on the other hand, is a bug: it is logged and counted,
/healthz fails, and the process stops and exits non-zero so that systemd
restarts it. docs/collector.md explains the design and its failure cases.
"""

from __future__ import annotations

import errno
import logging
import queue
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kerbside.collector import batching, fleet, fleet_web, storage
from kerbside.collector.decode import Decoded, Rejected, decode
from kerbside.collector.devices import DeviceTags
from kerbside.collector.dlq import LINE_TOPIC, DeadLetters
from kerbside.collector.gaps import SeqTracker
from kerbside.collector.health import Health
from kerbside.collector.influx import InfluxWriter
from kerbside.collector.metrics import Metrics, health_route, metrics_route, serve
from kerbside.collector.session import WINDOW_S
from kerbside.collector.source import KINDS, Incoming, Source
from kerbside.collector.spool import Batch, Spool
from kerbside.core import contract
from kerbside.core.errors import ConfigError
from kerbside.core.influx import InfluxAuthError, InfluxDown
from kerbside.core.settings import Config, is_loopback

log = logging.getLogger("kerbside.collector")

RETRY_S = 1.0
"""While a store cannot be written: how often the writer tries again."""
LOG_EVERY_S = 30.0
"""The same storage error is logged at most this often while it lasts."""


@dataclass(slots=True)
class Pending:
    """A cut batch on its way to durability: lines per retention policy, its messages, rejections, sequence state."""

    lines: dict[str, list[str]]
    acks: list[Incoming]
    dead: list[tuple[str, str, str, bytes]]
    state: str | None
    done: set[str] = field(default_factory=set)
    """Steps already durable ("dead", "state", "rp:<policy>"): a retry after a storage failure resumes after them."""


@dataclass(frozen=True, slots=True)
class Blocked:
    """Why nothing is acked now: a store that could not be written."""

    store: str
    error: str
    since: float
    """time.monotonic() of the first failure."""


class Collector:
    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time) -> None:
        if cfg.http.port and not is_loopback(cfg.http.host) and not cfg.http.password:
            raise ConfigError(f"http.host = {cfg.http.host!r} is not loopback: set http.password (the operator "
                              "credential for the fleet page, its API and /metrics) or keep http.host on 127.0.0.1")
        self.cfg = cfg
        self.clock = clock
        self.metrics = Metrics()
        self.checks = Health()
        """What /healthz reports; later parts add their checks here."""
        self.writer = InfluxWriter(cfg.influx)
        self.spool = Spool(cfg.spool.dir, cfg.spool.max_bytes, cfg.spool.warn_ratio)
        self.dlq = DeadLetters(cfg.dlq_dir, cfg.dlq.max_bytes)
        self.tracker = SeqTracker(cfg.state_dir / "sequences.json", cfg.state.max_bytes)
        self.devices = DeviceTags(cfg.registry.path or None)
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        self._pipe: queue.Queue[Pending | None] = queue.Queue(maxsize=2)
        self._cut_count = 0
        """Batches cut (decoder thread only) and committed or abandoned (writer thread only)."""
        self._done_count = 0
        self._cut_msgs = 0
        self._done_msgs = 0
        self._abandoned = False
        """A batch could not be made durable before stopping: later ones must not be acked either (their sequence
        state includes its messages)."""
        self.stopping = threading.Event()
        self.failure: str | None = None
        """Set when a thread died or a callback raised (a bug): the process exits non-zero and is restarted."""
        self.blocked: Blocked | None = None
        self._step = ""
        """The store the writer is writing to (for saying which one failed)."""
        self._logged: dict[str, float] = {}
        self.stopped = threading.Event()
        self._partial = False
        self._last_status: dict[str, bytes] = {}
        """Each device's last status message as received: a repeat of it changes nothing (_observe)."""
        self.online: dict[str, fleet.NodeStatus] = {}
        """Each device's last status (collector/fleet.py): the online view, the fleet page, the fleet metrics."""
        self.influx_up: bool | None = None
        self._down_until = 0.0
        self._backoff = 0.0
        self._threads: dict[str, threading.Thread] = {}
        self._running = False
        self._http: ThreadingHTTPServer | None = None
        self.source: Source = make_source(cfg, self.inbox.put, self.metrics, self._fail)
        # the batch being built
        self._lines: dict[str, list[str]] = defaultdict(list)
        self._nlines = 0
        self._acks: list[Incoming] = []
        self._dead: list[tuple[str, str, str, bytes]] = []
        self._batch_start = 0.0
        self.fleet = fleet_web.FleetView(cfg, self.online, self.devices.known, self._gapped, clock)
        self._describe()
        self._checks()
        self.routes = {"/metrics": metrics_route(self.render_metrics), "/healthz": health_route(self.health),
                       **fleet_web.routes(self.fleet)}
        """The HTTP server's pages; later parts add theirs before run()."""

    @property
    def failed(self) -> bool:
        return self.failure is not None

    # --- setup -------------------------------------------------------------------
    def _describe(self) -> None:
        """Every metric the collector exposes; the stores' and the tracker's are read from them at scrape time."""
        m = self.metrics
        t, sp, dl = self.tracker, self.spool, self.dlq
        for name, kind, text, labels, read in (
            ("kerbside_messages_total", "counter", "messages taken from the broker, by kind", ("kind",), None),
            ("kerbside_readings_total", "counter", "valid readings decoded (durable once acked)", (), None),
            ("kerbside_seq_resets_total", "counter", "sequence jumps too large to be gaps (reflashed or replaced nodes)",
             (), lambda: t.resets),
            ("kerbside_rejected_total", "counter", "messages and lines dead-lettered, by stable reason code", ("reason",), None),
            ("kerbside_duplicates_total", "counter", "readings whose sequence number was already seen (replays)",
             (), lambda: t.duplicates),
            ("kerbside_gaps_opened_total", "counter", "sequence gaps detected", (), lambda: t.gaps_opened),
            ("kerbside_gaps_suppressed_total", "counter",
             "sequence jumps not taken as gaps while another client with our client id may have taken messages",
             (), lambda: t.gaps_suppressed),
            ("kerbside_gaps_open", "gauge", "gaps not yet filled by backfill", (), t.open_gaps),
            ("kerbside_readings_missing", "gauge", "readings missing in open gaps", (), t.missing),
            ("kerbside_lines_written_total", "counter", "lines InfluxDB accepted (direct and from the spool)", (), None),
            ("kerbside_lines_spooled_total", "counter", "lines appended to the spool because InfluxDB could not take them",
             (), None),
            ("kerbside_spool_bytes", "gauge", "bytes waiting in the spool", (), lambda: sp.bytes),
            ("kerbside_spool_max_bytes", "gauge", "spool budget (spool.max_bytes)", (), lambda: sp.max_bytes),
            ("kerbside_spool_batches", "gauge", "batches waiting in the spool", (), lambda: len(sp)),
            ("kerbside_dlq_bytes", "gauge", "bytes the dead-letter store takes", (), lambda: dl.bytes),
            ("kerbside_dlq_max_bytes", "gauge", "dead-letter budget (dlq.max_bytes)", (), lambda: dl.max_bytes),
            ("kerbside_state_bytes", "gauge", "bytes the sequence state takes", (), lambda: t.bytes),
            ("kerbside_state_max_bytes", "gauge", "sequence state budget (state.max_bytes)", (), lambda: t.max_bytes),
            ("kerbside_storage_blocked", "gauge",
             "1 while a store (spool, dead letters, state) cannot be written: nothing is acked, the broker keeps the "
             "messages", (), lambda: int(self.blocked is not None)),
            ("kerbside_storage_errors_total", "counter", "writes a disk refused (no space, read-only, I/O error), by store",
             ("store",), None),
            ("kerbside_influx_up", "gauge", "1 when the last InfluxDB write succeeded", (), lambda: int(self.influx_up is True)),
            ("kerbside_flushes_total", "counter", "batches made durable", (), None),
            ("kerbside_unacked_messages", "gauge", "messages received but not yet durable/acked", (), self.unacked),
            ("kerbside_devices_online", "gauge", "devices whose last status says online", (),
             lambda: sum(1 for s in list(self.online.values()) if s.online)),
            ("kerbside_devices_offline", "gauge", "devices whose last status says offline (or whose last will fired)", (),
             lambda: sum(1 for s in list(self.online.values()) if not s.online)),
            ("kerbside_device_online", "gauge", "online/offline per registered device (only with registry.path)",
             ("device",), None),
            ("kerbside_internal_errors_total", "counter", "bugs: exceptions outside the decoder's contract, dead threads",
             (), None),
        ):
            m.describe(name, kind, text, labels, read)
        for name, key, text in fleet_web.METRICS:  # fleet health, by the fleet view's rules
            m.describe(name, "gauge", text, (), self.fleet.count(key))
        self.source.describe(m)

    def _gapped(self) -> set[str]:
        """Devices with open gaps in this collector's sequence tracking."""
        return {d for d, s in list(self.tracker.devices.items()) if s.gaps}

    def _checks(self) -> None:
        """What /healthz reports: one check per part (collector/health.py); 503 when any has a problem."""
        h = self.checks
        h.add("threads", self._check_threads)
        h.add("storage", self._check_storage)
        h.add(self.source.name, self.source.check)
        h.add("influx", self._check_influx)
        h.add("spool", lambda: self._store_check("spool", self.spool.dir, self.spool.bytes, self.spool.max_bytes,
                                                 batches=len(self.spool)))
        h.add("dlq", lambda: self._store_check("dlq", self.dlq.dir, self.dlq.bytes, self.dlq.max_bytes))
        h.add("state", lambda: self._store_check("state", self.cfg.state_dir, self.tracker.bytes, self.tracker.max_bytes))
        h.add("unacked", lambda: self.unacked() + self.inbox.qsize())
        h.add("devices", lambda: {"online": sorted(d for d, s in list(self.online.items()) if s.online),
                                  "offline": sorted(d for d, s in list(self.online.items()) if not s.online)})
        h.add("fleet", self.fleet.counts)  # informs: a node's problem is not the collector's (the fleet page says which)
        h.add("rejected", lambda: {r: int(self.metrics.get("kerbside_rejected_total", reason=r)) for r in contract.REASONS
                                   if self.metrics.get("kerbside_rejected_total", reason=r)})

    # --- failures: bugs stop the process, full or failing disks block it ----------------
    def _fail(self, what: str, exc: BaseException | None = None) -> None:
        """A bug: log it, count it, fail /healthz and stop; the CLI exits non-zero and systemd restarts us.
        Nothing unacked is lost: the broker redelivers it."""
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else "it stopped"
        log.error("%s failed (%s); stopping without acking what is not durable (the broker redelivers it), exit "
                  "status 1", what, detail, exc_info=exc)
        self.metrics.inc("kerbside_internal_errors_total")
        if self.failure is None:
            self.failure = f"{what} failed: {detail}"
        self.stopping.set()

    def _guard(self, name: str, run: Callable[[], None]) -> Callable[[], None]:
        def guarded() -> None:
            try:
                run()
            except BaseException as e:
                self._fail(f"thread {name}", e)
        return guarded

    def _block(self, store: str, e: OSError) -> None:
        """A store could not be written: say so (log, metrics, /healthz); the caller keeps its batch and retries."""
        where = e.filename or {"spool": self.spool.dir, "dlq": self.dlq.dir, "state": self.cfg.state_dir}.get(store, "")
        text = str(e) if isinstance(e, storage.StoreFull) else f"{store}: {e.strerror or e} (in {where})"
        if not isinstance(e, storage.StoreFull):
            self.metrics.inc("kerbside_storage_errors_total", store=store)
        if self.blocked is None or (self.blocked.store, self.blocked.error) != (store, text):
            self.blocked = Blocked(store, text, self.blocked.since if self.blocked else time.monotonic())
        key = f"{store}:{e.errno}:{type(e).__name__}"
        if time.monotonic() - self._logged.get(key, -1e9) >= LOG_EVERY_S:
            self._logged[key] = time.monotonic()
            log.error("cannot write the %s: %s; not acking, the broker queues meanwhile. %s", store, text,
                      self._advice(store, e))

    def _advice(self, store: str, e: OSError) -> str:
        if isinstance(e, storage.StoreFull):
            return {"spool": "Bring InfluxDB back or raise spool.max_bytes; it resumes by itself.",
                    "dlq": "Look at the dead letters (kerbside dlq list) and move old day files away, or raise "
                           "dlq.max_bytes; it resumes by itself.",
                    }.get(store, "Raise state.max_bytes; it resumes by itself.")
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return "Free space on that disk; it resumes by itself (replaying the spool frees space once InfluxDB is up)."
        if e.errno == errno.EROFS:
            return "The filesystem is read-only (the kernel may have remounted it after errors): check it and remount " \
                   "it read-write; it resumes by itself."
        if e.errno == errno.EIO:
            return "The disk reports I/O errors: check it (dmesg, smartctl); it retries meanwhile."
        return "Check the directory's permissions and disk; it retries meanwhile."

    def _unblock(self) -> None:
        if self.blocked is not None:
            log.warning("the %s can be written again after %.0f s; acking resumes", self.blocked.store,
                        time.monotonic() - self.blocked.since)
            self.blocked = None
            self._logged.clear()

    # --- handling ------------------------------------------------------------------
    def handle(self, item: Incoming) -> None:
        """Decode one message into the current batch or the dead letters. Never raises."""
        if item.view:
            self._view(item)
            return
        topic, payload = item.topic, item.payload
        kind = topic.rsplit("/", 1)[-1] if topic.startswith(contract.PREFIX) else "invalid"
        self.metrics.inc("kerbside_messages_total", kind=kind if kind in KINDS else "invalid")
        if not self._acks and not self._dead:
            self._batch_start = time.monotonic()
        self._acks.append(item)
        copy = self.source.copy(item)  # a retained copy of what was taken live before: it refreshes the online view
        try:
            d, tags = self._decode(item)
        except Rejected as e:
            if not copy:
                self._reject(topic, e.reason, e.detail, payload)
            return
        except Exception as e:  # a decoder bug must not stop the service or lose the message
            log.exception("internal error decoding %s", topic)
            self.metrics.inc("kerbside_internal_errors_total")
            self._reject(topic, "bad_structure", f"internal error: {type(e).__name__}: {e}"[:300], payload)
            return
        if d.kind == "status":
            self._observe(d, item.payload, item.retain)
        if copy:
            return
        if d.kind == "readings":
            rp = self.cfg.influx.rp if d.synced else self.cfg.influx.unsynced_rp
            self._watch_session()  # now: a takeover may have happened while the decoder waited for this message
            # A collector sharing the stream sees part of each sequence: `kerbside gaps scan` finds gaps instead.
            gap_lines = [] if self.source.shared else self.tracker.observe(
                d.device, d.seq, d.count, d.t0, d.period, tags or {}, may_open=not self._partial)
            self._add(rp, d.lines + gap_lines)
            self.metrics.inc("kerbside_readings_total", d.count)
        else:
            self._add(self.cfg.influx.rp, d.lines)

    def _view(self, item: Incoming) -> None:
        """A status another collector may be storing: it only updates this collector's online view. A bad one is
        the storing collector's to dead-letter."""
        try:
            d, _ = self._decode(item)
        except Exception:  # Rejected, or a decoder bug: the stored copy is dead-lettered (and logged) where it is taken
            return
        if d.kind == "status":
            self._observe(d, item.payload, False)

    def _decode(self, item: Incoming) -> tuple[Decoded, dict[str, str] | None]:
        """The message decoded with its device's registry tags (None for a topic that names no device)."""
        m = contract.TOPIC_RE.match(item.topic)
        tags = self.devices.tags_for(m.group(1)) if m else None
        return decode(item.topic, item.payload, self.clock(), tags), tags

    def _observe(self, d: Decoded, payload: bytes, retained: bool) -> None:
        """A status into the online view, once: the same message seen again (the stored copy and the view's copy of
        a status on a cluster, a retained copy of what was taken live) is no news, and would make the fleet view
        forget which sensor errors were rising."""
        if self._last_status.get(d.device) == payload:
            return
        self._last_status[d.device] = payload
        fleet.observe(self.online, d.device, bool(d.online), d.fields, d.synced, self.clock(), retained)
        if self.devices.registry is not None:  # without one any id is accepted: no series per device then
            self.metrics.set("kerbside_device_online", 1 if d.online else 0, device=d.device)

    def _reject(self, topic: str, reason: str, detail: str, payload: bytes) -> None:
        self._dead.append((topic, reason, detail, payload))
        self.metrics.inc("kerbside_rejected_total", reason=reason)

    def _add(self, rp: str, lines: list[str]) -> None:
        self._lines[rp].extend(lines)
        self._nlines += len(lines)

    def due(self) -> bool:
        return batching.due(self._nlines, len(self._acks), time.monotonic() - self._batch_start, self.cfg.batch)

    def _watch_session(self) -> None:
        """Decoder thread: gaps are not opened while the stream is partial, and each device starts afresh after."""
        partial = self.source.interrupted
        if self._partial and not partial:
            self.tracker.rebase()
            log.info("no session takeover for %.0f min: recording gaps again", WINDOW_S / 60)
        self._partial = partial

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

    def _commit(self, p: Pending) -> None:
        """Make a batch durable, then ack its messages. Raises OSError (a store's budget or disk) after the steps
        that succeeded, which a retry skips."""
        if p.dead and "dead" not in p.done:
            self._step = "dlq"
            self.dlq.add_many(p.dead, self.clock())
            p.done.add("dead")
        for rp, lines in p.lines.items():
            if lines and f"rp:{rp}" not in p.done:
                self._persist(Batch(rp, lines))
                p.done.add(f"rp:{rp}")
        if p.state is not None and "state" not in p.done:
            self._step = "state"
            self.tracker.write(p.state)
            p.done.add("state")
        self.source.ack(p.acks)
        self.metrics.inc("kerbside_flushes_total")

    def _commit_until_durable(self, p: Pending) -> bool:
        """Commit, retrying while a store cannot be written; False if asked to stop first (nothing acked)."""
        while True:
            try:
                self._commit(p)
            except OSError as e:  # a store's budget or its disk, not a bug: wait for room, then resume
                self._block(self._step, e)
                if self.stopping.is_set():
                    log.warning("stopping while the %s cannot be written: %d messages stay unacked (the broker "
                                "redelivers them)", self._step, len(p.acks))
                    return False
                self._wait_for_room()
                continue
            self._unblock()
            return True

    def _wait_for_room(self) -> None:
        """Replay the spool while InfluxDB takes it (its cursor needs no new space, and replayed segments are
        deleted), else wait a moment before the next try."""
        if len(self.spool) and time.monotonic() >= self._down_until:
            try:
                if self.drain():
                    return
            except OSError as e:
                self._block(self._step, e)
        self.stopping.wait(RETRY_S)

    def flush(self) -> bool:
        """Make the current batch durable and ack it, in the calling thread (once: False if a store refused)."""
        p = self._cut()
        if p is None:
            return True
        try:
            self._commit(p)
            ok = True
        except OSError as e:
            self._block(self._step, e)
            ok = False
        self._done_count += 1
        self._done_msgs += len(p.acks)
        return ok

    def unacked(self) -> int:
        """Messages decoded but not yet durable and acked (excluding the inbox)."""
        return len(self._acks) + self._cut_msgs - self._done_msgs

    def idle(self) -> bool:
        """Nothing decoded that is not yet durable and acked (for tests)."""
        return not self._acks and self._cut_count == self._done_count

    def _persist(self, batch: Batch) -> None:
        """Write to InfluxDB directly, or to the spool when InfluxDB is down or the spool still holds older data."""
        if len(self.spool) and time.monotonic() >= self._down_until:
            self.drain()  # older data first; under sustained load this is where the spool drains
        if len(self.spool) == 0 and time.monotonic() >= self._down_until:
            try:
                self._write(batch)
                return
            except InfluxDown as e:
                self._mark_down(e)
        self._step = "spool"
        self.spool.append(batch)
        self.metrics.inc("kerbside_lines_spooled_total", len(batch.lines))

    def _write(self, batch: Batch) -> None:
        bad = self.writer.write(batch.lines, batch.rp)
        if bad:
            self._step = "dlq"
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

    def drain(self) -> int:
        """Replay spooled batches oldest first, merged into writes of up to batch.lines lines, for at most half a
        second while InfluxDB takes them. Returns the lines written; raises OSError when a store refuses."""
        deadline = time.monotonic() + 0.5
        written = 0
        while len(self.spool) and time.monotonic() >= self._down_until and time.monotonic() < deadline:
            self._step = "spool"
            batch = self.spool.peek(self.cfg.batch.lines)
            if batch is None:
                break
            try:
                self._write(batch)
            except InfluxDown as e:
                self._mark_down(e)
                break
            self._step = "spool"
            self.spool.pop()
            written += len(batch.lines)
        return written

    # --- main loop -------------------------------------------------------------------
    def connect(self) -> None:
        """Start the source: it connects in the background; its threads are watched like ours."""
        self._threads.update(self.source.start())

    def start_http(self) -> None:
        if self.cfg.http.port:
            h = self.cfg.http
            self._http = serve(h.host, h.port, self.routes, wrap=lambda run: self._guard("http", run),
                               auth=(h.user, h.password) if h.password else None)
            log.info("metrics on http://%s:%d/metrics, health on /healthz, the fleet on /fleet%s", h.host, h.port,
                     f" (user {h.user!r} and http.password)" if h.password else "")

    def _writer_loop(self) -> None:
        """Commits batches in order while the decoder builds the next one; replays the spool when idle."""
        while True:
            try:
                p = self._pipe.get(timeout=0.2)
            except queue.Empty:
                self._idle_replay()
                continue
            if p is None:
                return
            try:
                if not self._abandoned:
                    self._abandoned = not self._commit_until_durable(p)
            finally:
                self._done_count += 1
                self._done_msgs += len(p.acks)

    def _idle_replay(self) -> None:
        """Between batches: replay the spool. A store that refuses is reported and retried, never fatal."""
        if not len(self.spool) or self.stopping.is_set() or time.monotonic() < self._down_until:
            return
        try:
            if self.drain() and self.blocked is not None and self.blocked.store == "spool":
                self._unblock()
        except OSError as e:
            self._block(self._step, e)
            self.stopping.wait(RETRY_S)

    def _watch_threads(self) -> None:
        """Decoder thread: a thread that ended while we run is a failure (paho's cannot be guarded: it is checked)."""
        for name, thread in self._threads.items():
            if not thread.is_alive() and not self.stopping.is_set():
                self._fail(f"thread {name}")

    def run(self) -> None:
        """Until stop(): then flush what is decoded, ack it, disconnect. Returns within a bounded time."""
        try:
            self.writer.ensure_db()
            self.influx_up = True
        except InfluxAuthError:
            raise
        except InfluxDown as e:
            self._mark_down(e)
        for warning in storage.room_warnings([
                ("spool", self.spool.dir, self.spool.max_bytes, self.spool.bytes),
                ("dead letters", self.dlq.dir, self.dlq.max_bytes, self.dlq.bytes),
                ("sequence state", self.cfg.state_dir, self.tracker.max_bytes, self.tracker.bytes)]):
            log.warning(warning)
        self._threads["decoder"] = threading.current_thread()
        writer = threading.Thread(target=self._guard("writer", self._writer_loop), name="writer", daemon=True)
        self._threads["writer"] = writer
        writer.start()
        self.start_http()
        self.connect()
        self._running = True
        try:
            while not self.stopping.is_set():
                self._watch_threads()
                self._watch_session()
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
        except BaseException as e:  # logged with its traceback; the CLI exits 1 on self.failed
            self._fail("thread decoder", e)
        finally:
            self._hand_over(None)  # the writer's signal to finish
            writer.join(60)
            self.source.stop()
            self.spool.close()
            self.writer.close()
            self.fleet.close()
            if self._http is not None:
                self._http.shutdown()
            self._running = False
            self.stopped.set()
            log.info("stopped; %d messages left unacked for redelivery", self.inbox.qsize() + self.unacked())

    def _put(self, p: Pending | None) -> None:
        """Hand a cut batch to the writer; blocks while it still has two (backpressure). None here is a no-op."""
        if p is not None:
            self._hand_over(p)

    def _hand_over(self, p: Pending | None) -> None:
        """Into the writer's pipe (None: finish). A writer that died takes nothing more: what it would have
        acked is redelivered."""
        while True:
            try:
                self._pipe.put(p, timeout=0.2)
                return
            except queue.Full:
                writer = self._threads.get("writer")
                if writer is None or not writer.is_alive():
                    return

    def stop(self) -> None:
        self.stopping.set()

    # --- observability ---------------------------------------------------------------------
    def render_metrics(self) -> bytes:
        return self.metrics.render()

    def _check_threads(self) -> dict[str, Any]:
        alive = {name: t.is_alive() for name, t in self._threads.items()}
        ok = self._running and self.failure is None and all(alive.values())
        problem = (self.failure or ("stopped threads: " + ", ".join(n for n, a in alive.items() if not a)
                                    if not all(alive.values()) else "not running"))
        return {"ok": ok, **alive, "failure": self.failure} | ({} if ok else {"problem": problem})

    def _check_storage(self) -> dict[str, Any]:
        b = self.blocked
        if b is None:
            return {"ok": True, "blocked": None}
        return {"ok": False, "blocked": {"store": b.store, "error": b.error, "for_s": round(time.monotonic() - b.since, 1)},
                "problem": f"not acking: the {b.store} cannot be written ({b.error})"}

    def _check_influx(self) -> dict[str, Any]:
        reachable = self.writer.ping()
        out: dict[str, Any] = {"ok": reachable, "reachable": reachable, "last_write_ok": self.influx_up,
                               "url": self.cfg.influx.url}
        if not reachable:
            out["problem"] = f"InfluxDB at {self.cfg.influx.url} does not answer (batches go to the spool)"
        return out

    @staticmethod
    def _store_check(name: str, directory: Path, used: int, limit: int, **more: Any) -> dict[str, Any]:
        try:
            free: int | None = storage.free_bytes(directory)
        except OSError:
            free = None
        out: dict[str, Any] = {"ok": used < limit, "bytes": used, "max_bytes": limit, **more, "disk_free_bytes": free}
        if used >= limit:
            out["problem"] = f"the {name} is full ({used} of {limit} bytes)"
        return out

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ok, details) as /healthz serves them."""
        return self.checks.report()


def make_source(cfg: Config, deliver: Callable[[Incoming], None], metrics: Metrics,
                fail: Callable[[str, BaseException | None], None]) -> Source:
    """collector.source: "mqtt" (Mosquitto, the default) or "amqp" (a RabbitMQ cluster's quorum queue)."""
    if cfg.collector.source == "amqp":
        from kerbside.collector.amqp_source import AmqpSource

        return AmqpSource(cfg.amqp, deliver, metrics, fail)
    from kerbside.collector.mqtt_source import MqttSource

    return MqttSource(cfg.mqtt, deliver, metrics, fail)
