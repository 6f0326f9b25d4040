"""`kerbside dlq replay`: dead letters go straight to InfluxDB, through today's decoder, registry and policies.

Replay used to republish each message on its original topic for the running collector to take again. On a
broker rendered by `kerbside broker-config` only a node may publish on its own topics (the collector's ingest
account reads and nothing else), and an MQTT 3.1.1 broker acknowledges a publish its ACL forbids and then
drops it: replay reported success while the data was lost. Decoding here with the collector's own decoder,
registry tags and retention policies needs no broker at all, and an entry that is rejected again stays in the
store, with the reason it was rejected this time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kerbside.collector.decode import Rejected, decode
from kerbside.collector.devices import DeviceTags
from kerbside.collector.dlq import Entry
from kerbside.collector.influx import InfluxWriter
from kerbside.core import contract
from kerbside.core.influx import InfluxDown
from kerbside.core.settings import Config


@dataclass
class Replayed:
    done: list[str] = field(default_factory=list)
    """Ids of the entries now in InfluxDB."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(id, why) of the entries still refused: by the decoder (reason: detail) or by InfluxDB."""
    stopped: str = ""
    """Why replay stopped before the end (InfluxDB down); the entries after the last one done are left as they were."""


def lines_for(entry: Entry, cfg: Config, devices: DeviceTags, now: float) -> tuple[str, list[str]]:
    """(retention policy, lines) as the collector would write them today; raises Rejected."""
    if entry.is_line:
        return cfg.influx.rp, [entry.payload.decode()]
    m = contract.TOPIC_RE.match(entry.topic)
    tags = devices.tags_for(m.group(1)) if m else None
    d = decode(entry.topic, entry.payload, now, tags)
    return (cfg.influx.unsynced_rp if d.kind == "readings" and not d.synced else cfg.influx.rp), d.lines


def replay(entries: Iterable[Entry], cfg: Config, writer: InfluxWriter, on_entry: Callable[[Entry], None] = lambda _e: None,
           clock: Callable[[], float] = time.time) -> Replayed:
    """Write each entry that decodes (or, for a line, that InfluxDB takes now); stop when InfluxDB is down."""
    devices = DeviceTags(cfg.registry.path or None, check_every_s=0)
    out = Replayed()
    for e in entries:
        on_entry(e)
        try:
            rp, lines = lines_for(e, cfg, devices, clock())
        except Rejected as r:
            out.failed.append((e.id, f"{r.reason}: {r.detail}" if r.detail else r.reason))
            continue
        try:
            bad = writer.write(lines, rp)
        except InfluxDown as err:
            out.stopped = str(err)
            return out
        if bad:
            out.failed.append((e.id, f"InfluxDB still refuses it: {bad[0][1]}"))
            continue
        out.done.append(e.id)
    return out
