"""What `kerbside provision` leaves besides the node: its label (--label) and its row in the depot's log (--report).

Both happen around each node's provisioning, as it finishes, whether it passed
or not: a failed node still has its id (re-running keeps it), so it gets its
label, and its row says what failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kerbside.provisioning import label as labels
from kerbside.provisioning.report import Report, firmware_hash

__all__ = ["Outputs", "firmware_hash"]


class Outputs:
    def __init__(self, label_dir: Path | None, report: Path | None) -> None:
        """Checks the report file before any node is touched (ConfigError)."""
        self.label_dir = label_dir
        self.report = Report(report).check() if report is not None else None
        self.firmware = ""
        """firmware_hash() of the files the nodes get, once they are built."""
        self.labels: list[Path] = []

    def around(self, row: Any, provision: Callable[[], Any]) -> Any:
        """Run provision() for a batch row (port, spec), then write its label and report row; errors pass through."""
        t0 = time.monotonic()
        spec = row.spec
        try:
            out = provision()
        except Exception as e:
            if self.report is not None:
                self.report.append(self.report.row(port=row.port, kit=spec.kit, site=spec.site, zone=spec.zone,
                                                   firmware=self.firmware, seconds=time.monotonic() - t0,
                                                   error=str(e) or type(e).__name__))
            raise
        if self.label_dir is not None and out.device_id:
            path = labels.write(self.label_dir, out.device_id, spec.kit, spec.site, spec.zone)
            self.labels.append(path)
            out.notes.append(f"label: {path}")
        if self.report is not None:
            self.report.append(self.report.row(port=row.port, kit=spec.kit, site=spec.site, zone=spec.zone,
                                               firmware=self.firmware, seconds=time.monotonic() - t0, outcome=out))
        return out
