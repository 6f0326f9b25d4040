"""The MQTT source: MQTT v5, QoS1, a persistent session and manual acks (paho-mqtt), for Mosquitto.

paho's network thread only queues (topic, payload, mid) and never acks on its
own (manual_ack): the collector's writer acks each message once its batch is
durable. Anything unacked when the process dies is redelivered by the broker
from the persistent session (clean_start = false, mqtt.session_expiry_s).

It also watches for a client-id collision (collector.session): two collectors
on one client id take the session from each other, each sees part of the
stream, and no gap may be recorded meanwhile. And it counts what the broker
refused, from the broker's log topic (collector.brokerlog).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kerbside.collector import brokerlog
from kerbside.collector.metrics import Metrics
from kerbside.collector.session import WINDOW_S, SessionWatch
from kerbside.collector.source import KINDS, Deliver, Fail, Incoming
from kerbside.core import contract
from kerbside.core.settings import MqttConfig

log = logging.getLogger("kerbside.collector")


class MqttSource:
    name = "mqtt"

    def __init__(self, cfg: MqttConfig, deliver: Deliver, metrics: Metrics, fail: Fail) -> None:
        self.cfg = cfg
        self.deliver = deliver
        self.metrics = metrics
        self.fail = fail
        self.shared = bool(cfg.group)
        self.session = SessionWatch()
        self.generation = 0
        self._conn_lock = threading.Lock()
        self.connected = False
        self.subscribed = False
        self._retained_seen = -1
        """Connection whose session was already there: retained copies on it were taken live before."""
        self._log_sub_mid = -1
        self._refused_logged: dict[str, float] = {}
        self._stopping = False
        self.client = self._make_client()

    def describe(self, metrics: Metrics) -> None:
        ses = self.session
        for name, kind, text, labels, read in (
            ("kerbside_mqtt_connected", "gauge", "1 while connected to the broker", (), lambda: int(self.connected)),
            ("kerbside_mqtt_subscribed", "gauge", "1 once the broker accepted our subscriptions", (),
             lambda: int(self.subscribed)),
            ("kerbside_mqtt_takeovers_total", "counter",
             "times the broker gave our session to another connection (0x8E, or closed and took us back at once)",
             (), lambda: ses.total),
            ("kerbside_mqtt_client_id_conflict", "gauge", "1 while another client seems to use our client id", (),
             lambda: int(ses.conflict)),
            ("kerbside_broker_refused_total", "counter", "messages the broker refused, from its log ($SYS/broker/log/N)",
             ("reason",), None),
        ):
            metrics.describe(name, kind, text, labels, read)

    def _make_client(self) -> mqtt.Client:
        c = self.cfg
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=c.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        if c.username:
            client.username_pw_set(c.username, c.password or None)
        if c.url.startswith("mqtts://"):
            client.tls_set(ca_certs=c.ca_file or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(1, 30)
        client.max_inflight_messages_set(1000)
        # Our callbacks never raise into paho (that would end its thread): a bug in one stops the collector instead.
        client.on_connect = self._callback("on_connect", self._on_connect)
        client.on_disconnect = self._callback("on_disconnect", self._on_disconnect)
        client.on_message = self._callback("on_message", self._on_message)
        client.on_subscribe = self._callback("on_subscribe", self._on_subscribe)
        client.on_connect_fail = self._callback("on_connect_fail", self._on_connect_fail)
        return client

    def _callback(self, name: str, fn: Callable[..., None]) -> Callable[..., None]:
        def safe(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as e:
                self.fail(f"MQTT callback {name}", e)
        return safe

    def topics(self) -> list[str]:
        prefix = f"$share/{self.cfg.group}/" if self.cfg.group else ""
        return [f"{prefix}{contract.PREFIX}+/{kind}" for kind in KINDS]

    # --- the source interface -------------------------------------------------------------------------
    def start(self) -> dict[str, threading.Thread]:
        u = urllib.parse.urlsplit(self.cfg.url)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        self.client.connect_async(u.hostname or "127.0.0.1", u.port or (8883 if u.scheme == "mqtts" else 1883),
                                  keepalive=self.cfg.keepalive_s, clean_start=False, properties=props)
        self.client.loop_start()
        thread = getattr(self.client, "_thread", None)  # paho's network thread: watched like ours
        return {"mqtt": thread} if isinstance(thread, threading.Thread) else {}

    def ack(self, items: Sequence[Incoming]) -> None:
        with self._conn_lock:  # no reconnect between checking the connection and sending its acks
            gen = self.generation
            for item in items:
                if item.generation == gen and item.qos > 0:
                    self.client.ack(item.mid, item.qos)

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def interrupted(self) -> bool:
        return self.session.partial

    def copy(self, item: Incoming) -> bool:
        # A retained message delivered on subscribing to a session we already had: its live copy was queued for
        # us and taken (written or dead-lettered) then. Processing it again would add a point (the will has no node
        # time) or a dead letter at every restart; it only refreshes the online view.
        return item.retain and item.generation == self._retained_seen

    def check(self) -> dict[str, Any]:
        conflict, cid = self.session.conflict, self.cfg.client_id
        out: dict[str, Any] = {"ok": self.connected and not conflict, "connected": self.connected,
                               "url": self.cfg.url, "client_id": cid,
                               "takeovers_recent": self.session.recent(), "client_id_conflict": conflict}
        if conflict:
            out["problem"] = (f"another client uses client_id {cid!r}: the broker keeps handing our session over; give "
                              "every collector its own mqtt.client_id")
        elif not self.connected:
            out["problem"] = f"not connected to the broker at {self.cfg.url}"
        return out

    # --- MQTT callbacks (network thread: no blocking, no acks) ---------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s (check mqtt.username/password and the ACL)", reason)
            self.session.connect_failed()
            return
        with self._conn_lock:
            self.generation += 1
            self._retained_seen = self.generation if flags.session_present else -1
        self.connected = True
        if self.session.connected():
            self._takeover(definite=False)
        log.info("connected to %s (session present: %s)", self.cfg.url, flags.session_present)
        client.subscribe([(t, 1) for t in self.topics()])
        self._log_sub_mid = client.subscribe(brokerlog.TOPIC, 0)[1] or -1

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self.session.connect_failed()
        log.warning("cannot reach the broker at %s; retrying (check mqtt.url and that mosquitto runs)", self.cfg.url)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: Any, properties: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if mid == self._log_sub_mid:
            if failed:
                log.info("the broker's log (%s) is not readable: refusals at the broker are not counted "
                         "(docs/collector.md, 'Oversize messages')", brokerlog.TOPIC)
            return
        if failed:
            log.error("broker refused subscriptions %s: %s (check the ACL for the collector's user)", self.topics(), failed)
        self.subscribed = not failed

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any, properties: Any) -> None:
        self.connected = False
        self.subscribed = False
        with self._conn_lock:
            self.generation += 1
        if self._stopping:
            return
        if self.session.disconnected(getattr(reason, "value", -1)):
            self._takeover(definite=True)
        backoff = self.session.backoff_s()
        client.reconnect_delay_set(backoff, max(30, backoff))
        log.warning("disconnected from the broker (%s); reconnecting in %d s, unacked messages will be redelivered",
                    reason, backoff)

    def _takeover(self, definite: bool) -> None:
        """The broker gave our session to another connection (or closed ours and took us back at once)."""
        n, cid = self.session.recent(), self.cfg.client_id
        if self.session.conflict:
            log.error("CLIENT ID CONFLICT: the broker handed our session to another client %d times in %.0f min: another "
                      "collector (or client) uses client_id %r. Give every collector its own mqtt.client_id; until then "
                      "each gets part of the stream (all of it is stored), no gaps are recorded (run `kerbside gaps scan "
                      "--since 1d` once it is fixed) and /healthz fails", n, WINDOW_S / 60, cid)
        elif definite:
            log.error("the broker says another client took our session (client_id %r, reason 0x8E): two collectors with one "
                      "mqtt.client_id?", cid)
        else:
            log.warning("the broker closed our connection and accepted us again at once (%d times in %.0f min): another "
                        "client with client_id %r, or a quick broker restart; no gaps are recorded for %.0f min",
                        n, WINDOW_S / 60, cid, WINDOW_S / 60)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith("$SYS/"):
            self._broker_log(msg.payload.decode("utf-8", "replace"))
            return
        self.deliver(Incoming(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self.generation, time.monotonic(),
                              bool(msg.retain)))

    def _broker_log(self, line: str) -> None:
        found = brokerlog.refusal(line)
        if found is None:
            return
        reason, client_id = found
        self.metrics.inc("kerbside_broker_refused_total", reason=reason)
        if time.monotonic() - self._refused_logged.get(client_id, -1e9) >= 60:
            self._refused_logged[client_id] = time.monotonic()
            log.warning("the broker refused a message from %s (%s: larger than its max_packet_size) and disconnected it; "
                        "a node sending messages this large breaks the contract (docs/wire)", client_id, reason)
