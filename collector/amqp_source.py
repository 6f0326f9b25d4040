"""The AMQP source: a RabbitMQ quorum queue, consumed with manual acks by competing collectors (pika).

On a RabbitMQ cluster nodes publish over MQTT as they do to Mosquitto; the
broker routes every message to the `amq.topic` exchange with the routing key
kerbside.v1.<id>.<kind>, and `kerbside broker-config --engine rabbitmq` binds
one quorum queue (amqp.queue) to it for readings, status and acks. A quorum
queue is replicated on a majority of nodes: once the broker has confirmed a
publish (the node's PUBACK), the message survives the loss of any minority of
the cluster, its leader included.

Every collector consumes that one queue (competing consumers: the broker
hands each message to one of them) and acks a delivery only once its batch is
durable, exactly as the MQTT source does: whatever a collector, or the broker
node it is connected to, held unacked when it died is delivered again to a
collector that is alive. A collector connects to any node of amqp.urls,
starting at a random one so that collectors spread, and moves to the next
when its node goes away.

Statuses are the exception to "each message to one collector": every
collector's fleet view and online metrics need every node's status, and a
queue holds no retained copies to learn them from at start. So each collector
also binds a private, server-named queue (exclusive: it goes with the
connection) to kerbside.v1.*.status and takes copies from it for its online
view only; the copy in the shared queue is the one stored and acknowledged.
A collector started fresh knows a node from its next status (`status_every`,
5 min by default), not at once as from Mosquitto's retained store.

pika's BlockingConnection is not thread-safe: only this source's thread uses
it; the writer's acks are handed over with add_callback_threadsafe.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import pika
import pika.exceptions

from kerbside.collector.metrics import Metrics
from kerbside.collector.source import Deliver, Fail, Incoming
from kerbside.core import contract
from kerbside.core.settings import AmqpConfig

log = logging.getLogger("kerbside.collector")

POLL_S = 0.2
"""How long the source's thread waits for broker traffic before it looks at stop() and pending acks."""
BACKOFF_MAX_S = 30.0
EXCHANGE = "amq.topic"
"""Where the MQTT plugin routes what nodes publish."""
STATUS_KEY = "kerbside.v1.*.status"


def topic_of(routing_key: str) -> str:
    """kerbside.v1.<id>.<kind> (the broker's translation of an MQTT topic) -> kerbside/v1/<id>/<kind>."""
    return routing_key.replace(".", "/")


def parameters(cfg: AmqpConfig) -> list[pika.URLParameters]:
    """One connection parameter set per cluster node in amqp.urls, credentials and TLS from the settings."""
    out = []
    for url in cfg.urls:
        u = urllib.parse.urlsplit(url)
        p = pika.URLParameters(url)
        if cfg.username:
            p.credentials = pika.PlainCredentials(cfg.username, cfg.password)
        p.virtual_host = cfg.vhost
        p.heartbeat = cfg.heartbeat_s
        p.blocked_connection_timeout = None
        p.connection_attempts = 1
        p.socket_timeout = 5
        if u.scheme == "amqps":
            ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
            p.ssl_options = pika.SSLOptions(ctx, u.hostname)
        out.append(p)
    return out


class AmqpSource:
    name = "amqp"
    shared = True
    """Competing consumers: whether or not another collector consumes now, none sees every sequence for sure."""

    def __init__(self, cfg: AmqpConfig, deliver: Deliver, metrics: Metrics, fail: Fail) -> None:
        self.cfg = cfg
        self.deliver = deliver
        self.metrics = metrics
        self.fail = fail
        self.params = parameters(cfg)
        self._next = random.randrange(len(self.params)) if self.params else 0
        self.generation = 0
        self.connected = False
        self.subscribed = False
        self.node = ""
        """The URL of the node we consume through now."""
        self._lock = threading.Lock()
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._problem = ""

    def describe(self, metrics: Metrics) -> None:
        for name, kind, text, labels, read in (
            ("kerbside_amqp_connected", "gauge", "1 while connected to a node of the cluster", (),
             lambda: int(self.connected)),
            ("kerbside_amqp_consuming", "gauge", "1 while the broker delivers from the queue to us", (),
             lambda: int(self.subscribed)),
            ("kerbside_amqp_reconnects_total", "counter", "connections to a cluster node after the first", (), None),
            ("kerbside_amqp_redelivered_total", "counter",
             "messages delivered again because a collector or a broker node went away before acking them "
             "(rewritten: the same points, so nothing is doubled in InfluxDB)", (), None),
        ):
            metrics.describe(name, kind, text, labels, read)

    # --- the source interface -------------------------------------------------------------------------
    def start(self) -> dict[str, threading.Thread]:
        if not self.params:
            raise ValueError("amqp.urls is empty: name every node of the cluster")
        self._thread = threading.Thread(target=self._run, name="amqp", daemon=True)
        self._thread.start()
        return {"amqp": self._thread}

    def ack(self, items: Sequence[Incoming]) -> None:
        """Deliveries on one channel are acked in order, so the batch's last one acks it all (multiple)."""
        with self._lock:
            gen, conn, channel = self.generation, self._conn, self._channel
            tags = [i.mid for i in items if i.generation == gen]
            if not tags or conn is None or channel is None:
                return
            last = max(tags)
            try:
                conn.add_callback_threadsafe(lambda: self._ack(channel, gen, last))
            except (pika.exceptions.AMQPError, OSError, AttributeError):
                pass  # the connection is going: what it delivered is delivered again

    def _ack(self, channel: Any, gen: int, tag: int) -> None:
        """The source's thread: only on the channel the deliveries came on."""
        if gen == self.generation and channel.is_open:
            channel.basic_ack(delivery_tag=tag, multiple=True)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    @property
    def interrupted(self) -> bool:
        return False

    def copy(self, item: Incoming) -> bool:
        return False  # a queue holds no retained copies: every message arrives once, live (or redelivered)

    def check(self) -> dict[str, Any]:
        ok = self.connected and self.subscribed
        out: dict[str, Any] = {"ok": ok, "connected": self.connected, "consuming": self.subscribed, "node": self.node,
                               "queue": self.cfg.queue}
        if not ok:
            out["problem"] = self._problem or f"not consuming {self.cfg.queue!r} from any of {', '.join(self.cfg.urls)}"
        return out

    # --- the source's thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 1.0
        first = True
        while not self._stopping.is_set():
            params = self.params[self._next % len(self.params)]
            url = self.cfg.urls[self._next % len(self.params)]
            try:
                self._consume(params, url, first)
                backoff = 1.0
            except pika.exceptions.ProbableAuthenticationError as e:
                self._problem = f"the broker at {url} refused amqp.username {self.cfg.username!r}: {e}"
                log.error("%s (check amqp.username and amqp.password)", self._problem)
            except pika.exceptions.ChannelClosedByBroker as e:
                self._problem = f"{url} refused to deliver from queue {self.cfg.queue!r}: {e.reply_code} {e.reply_text}"
                log.error("%s (is the queue there, and may amqp.username read it? `kerbside broker-config --engine "
                          "rabbitmq --apply` declares it)", self._problem)
            except (pika.exceptions.AMQPError, OSError) as e:
                self._problem = f"lost {url}: {type(e).__name__}: {e}"
                log.warning("%s; unacked messages will be delivered again, trying the next node", self._problem)
            finally:
                first = False
                self._lost()
            self._next += 1
            if self._stopping.wait(backoff * random.uniform(0.5, 1.0)):
                break
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    def _consume(self, params: pika.URLParameters, url: str, first: bool) -> None:
        conn = pika.BlockingConnection(params)
        try:
            channel = conn.channel()
            channel.basic_qos(prefetch_count=self.cfg.prefetch)
            channel.queue_declare(self.cfg.queue, passive=True)  # made by broker-config: never created here
            with self._lock:
                self.generation += 1
                self._conn, self._channel = conn, channel
            gen = self.generation
            channel.basic_consume(self.cfg.queue, lambda ch, m, p, body: self._on_message(gen, m, body),
                                  auto_ack=False)
            self._watch_statuses(conn, gen)  # before "ready": a status published after it reaches this view
            self.connected = self.subscribed = True
            self.node, self._problem = url, ""
            if not first:
                self.metrics.inc("kerbside_amqp_reconnects_total")
            log.info("consuming %s through %s", self.cfg.queue, url)
            while not self._stopping.is_set():
                conn.process_data_events(time_limit=POLL_S)
            conn.process_data_events(time_limit=0)  # the last acks the writer handed over before stop()
        finally:
            if conn.is_open:
                try:
                    conn.close()
                except (pika.exceptions.AMQPError, OSError):
                    pass

    def _watch_statuses(self, conn: pika.BlockingConnection, gen: int) -> None:
        """Copies of every status for the online view, on a channel of their own: a cluster whose definitions
        predate them refuses the private queue, which costs the view, never the stored stream."""
        try:
            ch = conn.channel()
            view = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
            ch.queue_bind(view, EXCHANGE, routing_key=STATUS_KEY)
            ch.basic_consume(view, lambda c, m, p, body: self._on_view(gen, m, body), auto_ack=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            log.warning("the broker refused a status queue for the fleet view (%s %s): this collector's fleet view "
                        "sees only the statuses it stores; re-run `kerbside broker-config --engine rabbitmq --apply`",
                        e.reply_code, e.reply_text)

    def _on_view(self, gen: int, method: Any, body: bytes) -> None:
        try:
            topic = topic_of(method.routing_key)
            if topic.startswith(contract.PREFIX):
                self.deliver(Incoming(topic, bytes(body), 0, 0, gen, time.monotonic(), view=True))
        except Exception as e:
            self.fail("AMQP callback on status copy", e)

    def _lost(self) -> None:
        with self._lock:
            self.generation += 1
            self._conn = self._channel = None
        self.connected = self.subscribed = False

    def _on_message(self, gen: int, method: Any, body: bytes) -> None:
        try:
            topic = topic_of(method.routing_key)
            if method.redelivered:
                self.metrics.inc("kerbside_amqp_redelivered_total")
                log.debug("redelivered: %s, delivery tag %d", topic, method.delivery_tag)
            if not topic.startswith(contract.PREFIX):
                topic = method.routing_key  # not ours: the decoder dead-letters it under its own name
            self.deliver(Incoming(topic, bytes(body), method.delivery_tag, 1, gen, time.monotonic(),
                                  redelivered=bool(method.redelivered)))
        except Exception as e:
            self.fail("AMQP callback on_message", e)
