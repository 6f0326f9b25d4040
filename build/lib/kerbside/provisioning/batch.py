"""Batch provisioning from a CSV file: one row per node, validated before any node is touched.

A malformed file is refused as a whole (a typo in row 40 should not be found
after 39 nodes); a node that fails while provisioning is recorded and the
batch goes on, because the other nodes on the bench are fine.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kerbside.provisioning.node_config import ConfigError, NodeSpec
from kerbside.provisioning.provision import Outcome

COLUMNS = ("port", "kit", "site", "zone", "lat", "lon")
REQUIRED = ("kit", "site")


class BatchError(ConfigError):
    pass


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
            spec = NodeSpec(kit=r["kit"], site=r["site"], zone=r.get("zone", ""),
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


def _one(row: Row, provision_one: Callable[[Row], Outcome]) -> Result:
    try:
        return Result(row, provision_one(row))
    except Exception as e:  # one node's failure must not stop the others
        return Result(row, error=str(e) or type(e).__name__)


def run(rows: Iterable[Row], provision_one: Callable[[Row], Outcome], on_done: Callable[[Result], None] = lambda _r: None,
        parallel: bool = False) -> list[Result]:
    """Provision every row; any exception is that node's failure, not the batch's.

    With `parallel`, nodes on different ports (a USB hub) are provisioned at
    the same time, which matters because each self-test waits up to a minute
    for Wi-Fi and the broker; rows on the same port still go one after another.
    Results come back in file order either way.
    """
    rows = list(rows)
    if not parallel:
        results = []
        for row in rows:
            results.append(res := _one(row, provision_one))
            on_done(res)
        return results
    by_port: dict[str, list[Row]] = {}
    for row in rows:
        by_port.setdefault(row.port, []).append(row)

    def port_worker(port_rows: list[Row]) -> list[Result]:
        done = []
        for row in port_rows:
            done.append(res := _one(row, provision_one))
            on_done(res)
        return done

    with ThreadPoolExecutor(max_workers=len(by_port), thread_name_prefix="provision") as pool:
        results = [r for chunk in pool.map(port_worker, by_port.values()) for r in chunk]
    return sorted(results, key=lambda r: rows.index(r.row))
