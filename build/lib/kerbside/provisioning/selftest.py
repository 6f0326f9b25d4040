"""Reading the node's self-test verdict.

The firmware prints exactly one line `KS_SELFTEST {json}`; everything else it
prints (boot chatter, sensor warnings) is ignored, so the firmware can log
freely without breaking provisioning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kerbside.core.errors import DeviceError

MARKER = "KS_SELFTEST "
RUN = "from knode import selftest\nselftest.run()\n"
EXPECTED_CHECKS = ("config", "sensors", "wifi", "broker", "publish")


class SelfTestError(DeviceError, RuntimeError):
    pass


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class SelfTest:
    ok: bool
    checks: tuple[Check, ...]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def redact(text: str, secrets: list[str]) -> str:
    """Device output shown to a technician must not carry the node's secrets, whatever the firmware prints."""
    for s in secrets:
        if s:
            text = text.replace(s, "<redacted>")
    return text


def parse(output: str) -> SelfTest:
    lines = [line for line in output.splitlines() if line.startswith(MARKER)]
    if len(lines) != 1:
        tail = "\n".join(output.strip().splitlines()[-5:])
        raise SelfTestError(f"expected one {MARKER.strip()} line from the node, found {len(lines)}; its output ended:\n{tail}")
    try:
        doc = json.loads(lines[0][len(MARKER):])
    except json.JSONDecodeError as e:
        raise SelfTestError(f"{MARKER.strip()} line is not JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool) or not isinstance(doc.get("checks"), list):
        raise SelfTestError(f'{MARKER.strip()} must be {{"ok": bool, "checks": [...]}}')
    checks = []
    for c in doc["checks"]:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not isinstance(c.get("ok"), bool):
            raise SelfTestError(f"malformed check in {MARKER.strip()}: {c!r}")
        checks.append(Check(c["name"], c["ok"], str(c.get("detail", ""))))
    # A node that reports ok while a check failed is lying; trust the checks.
    return SelfTest(doc["ok"] and all(c.ok for c in checks) and bool(checks), tuple(checks))
