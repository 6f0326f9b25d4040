"""Batch provisioning from a CSV file: one row per node, validated before any node is touched.

A malformed file is refused as a whole (a typo in row 40 should not be found
after 39 nodes); a node that fails while provisioning is recorded and the
batch goes on, because the other nodes on the bench are fine.

Rows may share a port: a depot with one USB cable plugs in one node after
another. Before each such row the technician is asked to plug in the next
node, and a board this batch already provisioned is refused (and asked for
again) instead of being provisioned a second time under the next row's site.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kerbside.provisioning.node_config import ConfigError, NodeSpec
from kerbside.provisioning.provision import Outcome, SameBoardError

COLUMNS = ("port", "kit", "site", "zone", "lat", "lon")
REQUIRED = ("kit", "site")


class BatchError(ConfigError):
    pass


class NoNextNode(BatchError):
    """The technician could not, or did not, plug in the next node (no answer): the rest of the batch stops."""


Seen = dict[str, str]
"""Board identity (Outcome.board) -> where this batch provisioned it, e.g. "line 2 (0a1b2c3d)"."""
ProvisionOne = Callable[["Row", Seen], Outcome]


@dataclass(frozen=True)
class Row:
    line: int
    port: str
    spec: NodeSpec


@dataclass
class Result:
    row: Row
    outcome: Outcome | None = None
    error: str = ""
    exit_code: int = 1
    """Of the error: 2 when it was a usage error and nothing was touched (kerbside.core.errors)."""

    @property
    def ok(self) -> bool:
        return not self.error and self.outcome is not None and self.outcome.ok


def _float(value: str, name: str, line: int) -> float | None:
    if not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise BatchError(f"line {line}: {name} {value!r} is not a number") from None


def parse(path: Path, default_port: str | None = None) -> list[Row]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets add a BOM
    except FileNotFoundError:
        raise BatchError(f"batch file {path} not found") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown:
        raise BatchError(f"{path}: header must name columns from {', '.join(COLUMNS)} (kit and site required); "
                         f"missing {missing or 'none'}, unknown {unknown or 'none'}")
    rows, errors = [], []
    for i, raw in enumerate(reader, start=2):
        r = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
        if not any(r.values()):
            continue
        try:
            # An empty zone, lat or lon is "not given": a node the registry knows keeps its own.
            spec = NodeSpec(kit=r["kit"], site=r["site"], zone=r.get("zone") or None,
                            lat=_float(r.get("lat", ""), "lat", i), lon=_float(r.get("lon", ""), "lon", i)).check()
            port = r.get("port") or default_port
            if not port:
                raise BatchError(f"line {i}: no port; add a port column or pass --port")
            rows.append(Row(i, port, spec))
        except (BatchError, ConfigError) as e:
            errors.append(str(e) if str(e).startswith("line ") else f"line {i}: {e}")
    if errors:
        raise BatchError(f"{path} has errors, no node was touched:\n  " + "\n  ".join(errors))
    if not rows:
        raise BatchError(f"{path} lists no nodes")
    return rows


def _failed(row: Row, e: Exception) -> Result:
    return Result(row, error=str(e) or type(e).__name__, exit_code=getattr(e, "exit_code", 1))


def shared_ports(rows: Iterable[Row]) -> set[str]:
    """Ports more than one row uses: one board after another on the same cable."""
    ports = [r.port for r in rows]
    return {p for p in ports if ports.count(p) > 1}


def _one(row: Row, provision_one: ProvisionOne, seen: Seen) -> Result:
    try:
        out = provision_one(row, seen)
    except Exception as e:  # one node's failure must not stop the others
        return _failed(row, e)
    seen.update({b: f"line {row.line} ({out.device_id})" for b in out.board})
    return Result(row, out)


def run(rows: Iterable[Row], provision_one: ProvisionOne, on_done: Callable[[Result], None] = lambda _r: None,
        parallel: bool = False, next_node: Callable[[Row, str], None] | None = None) -> list[Result]:
    """Provision every row; any exception is that node's failure, not the batch's.

    In turn, a row whose port an earlier row used first calls next_node(row, why): the technician plugs in the
    next board (it raises NoNextNode when there is none; the remaining rows are then not provisioned). A
    board provisioned earlier in the batch is refused, and next_node is asked again.

    With `parallel`, nodes on different ports (a USB hub) are provisioned at the same time, which matters
    because each self-test waits up to a minute for Wi-Fi and the broker; rows may not share a port then.
    Results come back in file order either way.
    """
    rows = list(rows)
    seen: Seen = {}
    if not parallel:
        results: list[Result] = []
        used: set[str] = set()
        stopped = ""
        for row in rows:
            if stopped:
                res = Result(row, error=stopped)
            else:
                res, stop = _in_turn(row, row.port in used, provision_one, seen, next_node)
                stopped = f"not provisioned: {res.error}" if stop else ""
            used.add(row.port)
            results.append(res)
            on_done(res)
        return results
    if shared_ports(rows):
        raise BatchError(f"rows share ports ({', '.join(sorted(shared_ports(rows)))}): one board after another cannot "
                         "go in parallel; drop --parallel, or give each row its own port")
    by_port: dict[str, list[Row]] = {}
    for row in rows:
        by_port.setdefault(row.port, []).append(row)

    def port_worker(port_rows: list[Row]) -> list[Result]:
        done = []
        for row in port_rows:
            done.append(res := _one(row, provision_one, seen))
            on_done(res)
        return done

    with ThreadPoolExecutor(max_workers=len(by_port), thread_name_prefix="provision") as pool:
        results = [r for chunk in pool.map(port_worker, by_port.values()) for r in chunk]
    return sorted(results, key=lambda r: rows.index(r.row))


def _in_turn(row: Row, swap: bool, provision_one: ProvisionOne, seen: Seen,
             next_node: Callable[[Row, str], None] | None) -> tuple[Result, bool]:
    """This row's result, and whether the batch stops here (nobody plugged in the next node)."""
    why = ""
    while True:
        if swap:
            if next_node is None:
                return Result(row, error=f"{row.port} was used by an earlier row: it needs the next node plugged in"), True
            try:
                next_node(row, why)
            except NoNextNode as e:
                return Result(row, error=str(e)), True
        try:
            out = provision_one(row, seen)
        except SameBoardError as e:
            why, swap = str(e), True
            continue
        except Exception as e:  # one node's failure must not stop the others
            return _failed(row, e), False
        seen.update({b: f"line {row.line} ({out.device_id})" for b in out.board})
        return Result(row, out), False
