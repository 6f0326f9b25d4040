"""Where the collector's messages come from: the one interface between a broker client and the pipeline.

The pipeline (collector.service) decodes, batches, makes each batch durable
(InfluxDB 2xx, or fsynced to the spool; rejections to the dead letters) and
only then hands the batch's messages back to their source to acknowledge. A
source only receives and acknowledges; it never decides what is durable. So
the durability rule, the spool, the dead letters and gap tracking are written
once, whichever broker the messages came through:

- collector.mqtt_source: MQTT v5 with a persistent session (Mosquitto), the default;
- collector.amqp_source: a RabbitMQ quorum queue over AMQP 0-9-1, several
  collectors consuming it as competing consumers (a clustered broker).

A source calls `deliver` from its own thread(s) and never blocks there; `ack`
is called from the collector's writer thread after durability, for messages in
the order they were delivered. An acknowledgement is only meaningful on the
connection a message came on (`generation`): one that arrived on a connection
since lost is not acked, and the broker delivers it again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kerbside.collector.metrics import Metrics

KINDS = ("readings", "status", "ack")
"""What nodes send, and every source delivers: kerbside/v1/<id>/<kind>."""


@dataclass(slots=True)
class Incoming:
    topic: str
    """kerbside/v1/<id>/<kind>, whatever the broker called it (an AMQP routing key is translated)."""
    payload: bytes
    mid: int
    """What acknowledges it on its connection: the MQTT packet id, the AMQP delivery tag."""
    qos: int
    """0: nothing to acknowledge."""
    generation: int
    """Connection the message came on: an acknowledgement is only meaningful to the broker on that connection."""
    received: float
    retain: bool = False
    """Delivered from the broker's retained store (on subscribing), not forwarded live."""
    redelivered: bool = False
    """The broker delivered it before (to us or another collector) and it was not acknowledged then."""
    view: bool = False
    """A copy of a status for the online view only (nothing to store or acknowledge): competing consumers each
    store part of the statuses, but every collector's fleet view needs all of them (collector.amqp_source)."""


Deliver = Callable[[Incoming], None]
Fail = Callable[[str, BaseException | None], None]
"""A bug in a source's callback: the collector logs it, fails /healthz and stops (systemd restarts it)."""


class Source(Protocol):
    name: str
    """"mqtt" or "amqp": names its /healthz check and its metrics."""
    shared: bool
    """Each device's stream is split between several collectors (a $share group, competing consumers): this one
    sees part of every sequence, so it records no gaps itself and `kerbside gaps scan` does (collector.gapscan)."""
    connected: bool
    subscribed: bool
    """Ready: the broker accepted our subscriptions (MQTT) or our consumer (AMQP)."""

    def describe(self, metrics: Metrics) -> None:
        """Add the source's own metrics (its connection, what it counts)."""

    def start(self) -> dict[str, threading.Thread]:
        """Connect in the background, reconnecting until stop(); returns the threads the collector watches."""

    def ack(self, items: Sequence[Incoming]) -> None:
        """Acknowledge durable messages (writer thread, delivery order). Those from a lost connection are skipped."""

    def stop(self) -> None:
        """Disconnect; what is not acknowledged is delivered again (to us on restart, or to another collector)."""

    def check(self) -> dict[str, Any]:
        """Its /healthz details: "ok", and "problem" when it is not."""

    @property
    def interrupted(self) -> bool:
        """Another client may have taken part of our stream lately: sequence jumps are not gaps now."""

    def copy(self, item: Incoming) -> bool:
        """A retained copy of a message already taken live: it only refreshes the online view."""
