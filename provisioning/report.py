"""`kerbside provision --report FILE`: one row per node provisioned, appended, as CSV or JSON lines.

The depot's record of what went out: which id each board got (new or kept),
for which kit and site, with which firmware (a hash of the files uploaded) and
config version, what each self-test check said and how long it took. Rows are
appended as each node finishes, each one flushed and fsynced, so an
interrupted batch keeps the rows of the nodes done; a failed node gets its row
too, with the error. `.csv` gets a header when the file is new (and a file with
another header is refused before any node is touched); any other name gets
one JSON object per line.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kerbside.core.errors import ConfigError
from kerbside.provisioning.bundle import DeviceFile
from kerbside.provisioning.selftest import EXPECTED_CHECKS

COLUMNS = ("time", "port", "device", "identity", "kit", "site", "zone", "firmware", "config", "result",
           *(f"check_{c}" for c in EXPECTED_CHECKS), "failed", "seconds", "error")


def firmware_hash(files: Sequence[DeviceFile]) -> str:
    """One hash for the whole set of files a node gets: same hash, same firmware on the node."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.sha256}\n".encode())
    return h.hexdigest()[:16]


class Report:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.csv = path.suffix.lower() == ".csv"
        self._lock = threading.Lock()  # --parallel finishes nodes on several threads

    def check(self) -> Report:
        """Before any node is touched: the file can be appended to, and a CSV's header is ours."""
        if not self.path.parent.is_dir():
            raise ConfigError(f"--report {self.path}: directory {self.path.parent} does not exist")
        if self.csv and self.path.exists() and self.path.stat().st_size:
            with open(self.path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            if tuple(header) != COLUMNS:
                raise ConfigError(f"--report {self.path} has other columns ({', '.join(header[:4])}, ...): give a new "
                                  "file (or a .jsonl one)")
        try:
            with open(self.path, "a", encoding="utf-8"):
                pass
        except OSError as e:
            raise ConfigError(f"--report {self.path}: cannot write it ({e.strerror})") from None
        return self

    def row(self, *, port: str, kit: str, site: str, zone: str, firmware: str, seconds: float, outcome: Any = None,
            error: str = "") -> dict[str, Any]:
        """The row for one node; `outcome` is provisioning's Outcome (None when it failed before having one)."""
        st = outcome.selftest if outcome is not None else None
        checks = {c.name: c for c in st.checks} if st is not None else {}
        row: dict[str, Any] = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "port": port,
            "device": outcome.device_id if outcome is not None else "",
            "identity": "" if outcome is None else "new" if outcome.new_identity else "kept",
            "kit": kit, "site": site, "zone": zone, "firmware": firmware,
            "config": (outcome.cfg or "") if outcome is not None else "",
            "result": "error" if outcome is None else "skipped" if st is None else "pass" if st.ok else "fail",
        }
        for name in EXPECTED_CHECKS:
            c = checks.get(name)
            row[f"check_{name}"] = "" if c is None else "pass" if c.ok else "fail"
        row["failed"] = "; ".join(f"{c.name}: {c.detail}" for c in (st.failed if st else []))
        row["seconds"] = round(seconds, 1)
        row["error"] = error
        return row

    def append(self, row: dict[str, Any]) -> None:
        if self.csv:
            buf = io.StringIO()
            w = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
            w.writerow(row)
            text = buf.getvalue()
        else:
            checks = {k[len("check_"):]: row.pop(k) for k in list(row) if k.startswith("check_")}
            text = json.dumps({**row, "checks": checks}, ensure_ascii=False) + "\n"
        with self._lock:
            header = self.csv and (not self.path.exists() or self.path.stat().st_size == 0)
            with open(self.path, "a", encoding="utf-8", newline="") as f:
                if header:
                    f.write(",".join(COLUMNS) + "\n")
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
