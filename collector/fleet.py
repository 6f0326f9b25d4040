"""The fleet view: every registered node, what the collector knows of it, and what is wrong with it.

Three sources, each read where it lives: the node's last status (kept here from
the retained status messages, so a fresh collector knows the whole fleet on
subscribe), the registry (kit, site, zone, position), and InfluxDB (readings,
capture and gaps of the last 24 hours, in a bounded number of GROUP BY queries:
collector/fleet_queries.py). The rules that turn these into problems live here
and only here: the web page, its JSON API, `kerbside fleet` and the fleet-health
metrics all ask this module, so a node is "offline" or "dropping" in the same
sense everywhere.

The status part is cheap (memory only) and feeds /metrics on every scrape;
the InfluxDB part is read when someone looks (the page, the CLI).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kerbside.core.registry import Device

HOUR = 3600
WINDOW_H = 24
"""Hours the view looks back: capture, heatmap, sparklines."""
BACKLOG = 10
"""Readings buffered on a node that make a backlog (a node online and keeping up holds 0 or 1)."""
LASER_LIFE_H = 8000
LASER_WARN_H = 7000
"""PM laser hours from which a node is flagged: the PMS5003's laser lasts about 8000 h."""
CAPTURE_MIN = 0.75
"""Below this data capture over the window a node is flagged (an hourly mean needs 75 %: docs/analysts.md)."""
CHANNEL_MIN = 0.75
"""An always-fitted channel present in fewer of the readings than this is a failing sensor."""

SENSORS = {"pm": "PM sensor", "th": "temperature/humidity sensor", "co2": "CO2 sensor", "no2": "NO2 sensor",
           "det": "traffic detector"}
"""health.<x>_err counters (docs/wire/README.md) and the part they count errors of."""
ALWAYS_FITTED = {"air": (("pm25", "PM sensor", "PM2.5"), ("temp", "temperature/humidity sensor", "temperature"))}
"""Channels every node of a kit has a sensor for: missing values mean the sensor failed, not that it is absent."""
PROBLEMS = ("offline", "unseen", "dropping", "backlog", "sensor", "firmware", "config", "clock", "capture", "gaps")
"""Problem codes, in the order they are listed."""


@dataclass(frozen=True)
class NodeStatus:
    """A node's last status as the collector received it; replaced whole on each status (readers never see half)."""

    online: bool
    seen: float
    """Collector clock (unix s) when the last status arrived."""
    since: float | None
    """Collector clock when the node went online or offline, as seen live; None when the state was learned from a
    retained copy (on subscribing) and has not changed since."""
    synced: bool
    fields: Mapping[str, Any]
    """The last known value of every status field (fw, uptime, heap, rssi, buffered, dropped, boot, seq, config, kit,
    health_*): a last will carries only `online`, so the rest is what the node said before it went."""
    errors_rising: tuple[str, ...] = ()
    """health_*_err counters that grew between the node's last two statuses in one boot: errors happening now."""

    def get(self, name: str) -> Any:
        return self.fields.get(name)


def observe(statuses: dict[str, NodeStatus], device: str, online: bool, fields: Mapping[str, Any], synced: bool,
            now: float, retained: bool) -> NodeStatus:
    """Record a status message (decoder thread); returns what is now known of the device."""
    prev = statuses.get(device)
    new_fields = {k: v for k, v in fields.items() if k != "online"}
    merged = {**(prev.fields if prev else {}), **new_fields}
    if prev is not None and prev.online == online:
        since = prev.since
    else:
        since = None if retained else now
    rising = prev.errors_rising if prev else ()
    if prev is not None and "boot" in new_fields:
        same_boot = prev.fields.get("boot") == new_fields.get("boot")
        rising = tuple(sorted(k for k, v in new_fields.items() if k.startswith("health_") and k.endswith("_err")
                              and same_boot and isinstance(prev.fields.get(k), int) and v > prev.fields[k]))
    status = NodeStatus(online, now, since, synced if "boot" in new_fields else (prev.synced if prev else synced),
                        merged, rising)
    statuses[device] = status
    return status


# --- what is current ---------------------------------------------------------------------------------


def version_key(v: str) -> tuple:
    """"0.10.2" after "0.9.1": numbers compare as numbers, the rest as text."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-+]", v))


@dataclass(frozen=True)
class Current:
    """What the fleet runs at its newest: a node behind it is flagged (a roll-out that did not reach it)."""

    fw: str | None
    config: dict[str, int]
    """Highest config version per kit: fleet-wide changes give every node of a kit the same version."""

    @staticmethod
    def of(nodes: Iterable[tuple[str, NodeStatus | None]]) -> Current:
        fws: set[str] = set()
        config: dict[str, int] = {}
        for kit, st in nodes:
            if st is None:
                continue
            fw, cfg = st.get("fw"), st.get("config")
            if isinstance(fw, str):
                fws.add(fw)
            if isinstance(cfg, int):
                config[kit] = max(config.get(kit, 0), cfg)
        return Current(max(fws, key=version_key) if fws else None, config)


# --- problems ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    code: str
    """One of PROBLEMS."""
    text: str


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 2 * HOUR:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // HOUR} h"
    return f"{s // 86400} d"


def status_problems(kit: str, st: NodeStatus | None, current: Current, now: float) -> list[Problem]:
    """What the node's own status says is wrong (memory only: the metrics use exactly this)."""
    if st is None:
        return [Problem("unseen", "never seen: no status from this node (not powered, not on Wi-Fi, or its broker "
                                  "login fails)")]
    out = []
    if not st.online:
        out.append(Problem("offline", f"offline for {_ago(now - st.since)}" if st.since is not None else "offline"))
    drop = st.get("dropped")
    if isinstance(drop, int) and drop > 0:
        out.append(Problem("dropping", f"dropped {drop} readings: its buffer was full (oldest first)"))
    buf = st.get("buffered")
    if isinstance(buf, int) and buf >= BACKLOG:
        out.append(Problem("backlog", f"{buf} readings buffered, not yet sent"))
    for key in st.errors_rising:
        part = SENSORS.get(key[len("health_"):-len("_err")], key)
        out.append(Problem("sensor", f"{part}: {st.get(key)} frame/CRC errors since boot, rising"))
    laser = st.get("health_laser_h")
    if isinstance(laser, int) and laser >= LASER_WARN_H:
        out.append(Problem("sensor", f"PM laser at {laser} h of ~{LASER_LIFE_H} h: plan a replacement"))
    fw = st.get("fw")
    if current.fw is not None and isinstance(fw, str) and fw != current.fw:
        out.append(Problem("firmware", f"firmware {fw}, the fleet's newest is {current.fw}"))
    cfg, top = st.get("config"), current.config.get(kit)
    if isinstance(cfg, int) and top is not None and cfg < top:
        out.append(Problem("config", f"config v{cfg}, other {kit} nodes have v{top}"))
    if st.online and not st.synced:
        out.append(Problem("clock", "clock not synced (no NTP): readings go to the unsynced measurements"))
    return out


@dataclass
class Data:
    """What InfluxDB holds of one node in the window (collector/fleet_queries.py)."""

    counts: list[int]
    """Readings per hour."""
    capture: list[float]
    """Sum of the readings' capture per hour."""
    channels: dict[str, int] = field(default_factory=dict)
    """Readings carrying each always-fitted channel, over the window."""
    last_reading: float | None = None
    gaps_open: int = 0
    missing: int = 0


def data_problems(kit: str, data: Data, per_hour: float, hours: int) -> list[Problem]:
    """What InfluxDB says is wrong: low capture, a sensor whose channel is missing, open gaps."""
    out = []
    n = sum(data.counts)
    capture = sum(data.capture) / (per_hour * hours) if hours else 1.0
    if capture < CAPTURE_MIN:
        out.append(Problem("capture", f"data capture {int(capture * 100 + 0.5)} % over the last {hours} h (valid hours "
                                      "need 75 %)"))  # rounded as the page rounds
    for channel, part, label in ALWAYS_FITTED.get(kit, ()):
        got = data.channels.get(channel, 0)
        if n and got < CHANNEL_MIN * n:
            out.append(Problem("sensor", f"{part}: no {label} in {n - got} of {n} readings ({hours} h)"))
    if data.gaps_open:
        plural = "" if data.gaps_open == 1 else "s"
        out.append(Problem("gaps", f"{data.gaps_open} open gap{plural}, {data.missing} readings missing"))
    return out


# --- the view ----------------------------------------------------------------------------------------


def window(now: float, hours: int = WINDOW_H) -> tuple[int, int]:
    """The last `hours` complete hours before `now`: [start, end) in unix seconds."""
    end = int(now) // HOUR * HOUR
    return end - hours * HOUR, end


def _created(d: Device) -> float | None:
    try:
        return dt.datetime.fromisoformat(d.created).timestamp() if d.created else None
    except ValueError:
        return None


def _num(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def node_row(d: Device, st: NodeStatus | None, data: Data | None, current: Current, now: float, start: int,
             per_hour: float) -> dict[str, Any]:
    """One node as the table, the map, the heatmap and `kerbside fleet --json` show it."""
    problems = status_problems(d.kit, st, current, now)
    row: dict[str, Any] = {
        "id": d.id, "kit": d.kit, "site": d.site, "zone": d.zone, "lat": d.lat, "lon": d.lon,
        "state": "unseen" if st is None else "online" if st.online else "offline",
        "since": st.since if st else None, "status_seen": st.seen if st else None,
    }
    f = st.fields if st else {}
    row.update({"fw": f.get("fw"), "config": f.get("config"), "rssi": f.get("rssi"), "heap": f.get("heap"),
                "buffered": f.get("buffered"), "dropped": f.get("dropped"), "boot": f.get("boot"),
                "uptime": f.get("uptime"), "synced": st.synced if st else None,
                "health": {k[len("health_"):]: v for k, v in sorted(f.items()) if k.startswith("health_")}})
    row["fw_current"] = current.fw is None or row["fw"] in (None, current.fw)
    top = current.config.get(d.kit)
    row["config_current"] = top is None or row["config"] is None or row["config"] >= top
    if data is not None:
        created = _created(d)
        hours = len(data.counts)
        if created is not None and created > start:  # a node installed in the window is judged on its hours
            hours = max(1, min(hours, math.ceil((start + hours * HOUR - created) / HOUR)))
        row["hourly"] = {"n": data.counts, "capture": [round(min(1.0, c / per_hour), 4) for c in data.capture]}
        row["readings"] = sum(data.counts)
        row["capture"] = round(min(1.0, sum(data.capture[-hours:]) / (per_hour * hours)), 4)
        row["last_reading"] = data.last_reading
        row["gaps_open"], row["missing"] = data.gaps_open, data.missing
        problems += data_problems(d.kit, Data(data.counts[-hours:], data.capture[-hours:], data.channels,
                                              data.last_reading, data.gaps_open, data.missing), per_hour, hours)
    problems.sort(key=lambda p: PROBLEMS.index(p.code))
    row["problems"] = [{"code": p.code, "text": p.text} for p in problems]
    return {k: _num(v) for k, v in row.items()}


SORT_KEYS = ("id", "site", "zone", "kit", "state", "since", "last_reading", "fw", "config", "rssi", "buffered",
             "dropped", "capture", "gaps_open", "problems")


def select(rows: list[dict[str, Any]], *, offline: bool = False, zone: str | None = None, problems: bool = False,
           sort: str = "problems", descending: bool = False) -> list[dict[str, Any]]:
    """Filter and sort rows: the page's controls, the API's parameters and the CLI's options are this."""
    if sort not in SORT_KEYS:
        raise ValueError(f"sort by one of {', '.join(SORT_KEYS)}, not {sort!r}")
    out = [r for r in rows if (not offline or r["state"] != "online") and (zone is None or r["zone"] == zone)
           and (not problems or r["problems"])]

    def key(r: dict[str, Any]) -> tuple:
        v = -len(r["problems"]) if sort == "problems" else r.get(sort)  # most problems first by default
        missing = v is None
        return (missing, (0, v) if isinstance(v, (int, float)) else (1, str(v or "")), r["site"], r["id"])

    out.sort(key=key)
    if descending:
        present = [r for r in out if (r.get(sort) is not None or sort == "problems")]
        out = present[::-1] + [r for r in out if r not in present]
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Counts for the page's header and the CLI's last line."""
    out = {"nodes": len(rows), "online": 0, "offline": 0, "unseen": 0, "problems": 0}
    for r in rows:
        out[r["state"]] += 1
        out["problems"] += bool(r["problems"])
    for code in PROBLEMS:
        out[code] = sum(1 for r in rows if any(p["code"] == code for p in r["problems"]))
    return out
