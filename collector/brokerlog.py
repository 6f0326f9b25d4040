"""What the broker refused, read from its log where Mosquitto lets a client see it.

With `log_dest topic` in mosquitto.conf, Mosquitto publishes its log lines on
$SYS/broker/log/<level>; the collector subscribes to the notice level (QoS 0,
if its ACL allows) and counts the refusals it recognises there:

* a packet over `max_packet_size`: "Client <id> disconnected due to oversize packet."
  (Mosquitto closes the publisher's connection; nothing reaches the collector).

A message over `message_size_limit` is dropped with only a debug-level line and
a normal PUBACK to an MQTT 3.1.1 publisher, so nothing can count it: that is why
docs/collector.md recommends max_packet_size.
"""

from __future__ import annotations

import re

TOPIC = "$SYS/broker/log/N"
_OVERSIZE = re.compile(r"Client (\S+) disconnected due to oversize packet")


def refusal(line: str) -> tuple[str, str] | None:
    """(reason code, client id) of a refusal the log line reports, or None."""
    m = _OVERSIZE.search(line)
    return ("oversize", m.group(1)) if m else None
