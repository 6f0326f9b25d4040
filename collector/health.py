"""/healthz: the one place where the collector's health is computed, from named checks.

Each part of the collector that can be unwell registers a check: a function
returning its details as a dict, with "ok" (false when it is unwell) and a
"problem" sentence for the operator. A check without "ok" only informs (the
device lists). The report is ok when no check says otherwise, and lists every
problem, so a monitor needs one field and a person reading the JSON finds the
reason next to it. Later parts (a fleet view) add checks the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("kerbside.collector.health")

Check = Callable[[], Any]


class Health:
    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        """Register `check` under `name`, the key of its details in the report."""
        if name in ("ok", "problems") or name in self._checks:
            raise ValueError(f"health check name {name!r} is taken")
        self._checks[name] = check

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(ok, the JSON document): ok only if no check reports a problem; a check that raises is one."""
        doc: dict[str, Any] = {"ok": True, "problems": []}
        for name, check in self._checks.items():
            try:
                details = check()
            except Exception as e:  # a broken check must not hide the others, nor pass as healthy
                log.exception("health check %s failed", name)
                details = {"ok": False, "problem": f"{name}: the health check itself failed ({type(e).__name__}: {e})"}
            doc[name] = details
            if isinstance(details, dict) and details.get("ok") is False:
                doc["problems"].append(details.get("problem") or f"{name} is not ok")
        doc["ok"] = not doc["problems"]
        return doc["ok"], doc
