"""Sequence histories for comparing the live gap tracker with `kerbside gaps scan`: what nodes send, what arrives."""

from __future__ import annotations

import random
from dataclasses import dataclass

from kerbside.collector.gapscan import Record

NS = 1_000_000_000
T0 = 1_767_225_600


@dataclass(frozen=True)
class Msg:
    device: str
    seq: int
    count: int
    t0: int
    period: int


def node(device: str, rng: random.Random, readings: int = 120, start: int = T0) -> list[Msg]:
    """A node's messages in the order it sends them: runs of readings, split at reboots (a time gap, no seq gap).

    Points carry no period, so the scan learns it from two consecutive readings: the first message, which
    always arrives first (the tracker starts at the first reading it sees), has at least two.
    """
    period = rng.choice([60, 60, 300])
    msgs, seq, t = [], 0, start + rng.randrange(3600)
    while seq < readings:
        if rng.random() < 0.08:
            t += rng.randrange(1, 40) * period + rng.randrange(period)  # down for a while, back on a new boot
        n = min(rng.randint(2 if seq == 0 else 1, 8), readings - seq)
        msgs.append(Msg(device, seq, n, t, period))
        seq, t = seq + n, t + n * period
    return msgs


def deliver(msgs: list[Msg], rng: random.Random) -> list[Msg]:
    """What reaches the collector: some messages lost, some held back and delivered late, some twice."""
    out: list[Msg] = []
    held: list[Msg] = []
    for i, m in enumerate(msgs):
        r = rng.random()
        if i and r < 0.12:
            continue  # lost for good: a gap that stays open
        if i and r < 0.30:
            held.append(m)  # buffered on the node during an outage: arrives after newer ones
        else:
            out.append(m)
        if held and rng.random() < 0.2:
            out += held  # the backlog drains oldest first
            held = []
        if rng.random() < 0.05:
            out.append(rng.choice(out))  # redelivered after a reconnect
    return out + held


def tracker_records(lines: list[str]) -> set[tuple]:
    out = set()
    for line in lines:
        head, fields, ts = line.split(" ")
        f = dict(kv.split("=") for kv in fields.split(","))
        out.add((head.split("device=")[1], int(ts), int(f["first_seq"][:-1]), int(f["last_seq"][:-1]),
                 int(f["missing"][:-1]), int(f["period"][:-1])))
    return out


def scan_records(records: list[Record]) -> set[tuple]:
    return {(r.device, r.ts, r.first, r.last, r.missing, r.period) for r in records}
