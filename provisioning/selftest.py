"""Reading the node's self-test verdict.

The firmware prints exactly one line `KS_SELFTEST {json}`; everything else it
prints (boot chatter, sensor warnings) is ignored, so the firmware can log
freely without breaking provisioning.
"""

from __future__ import annotations

import json
import re
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


_NAMED = {"\n": "n", "\r": "r", "\t": "t", "\b": "b", "\f": "f", "\v": "v", "\a": "a", "\0": "0"}


def _char(ch: str) -> str:
    """A regex for one character of a secret as any printer may have written it.

    Literally, or escaped once or more (repr, JSON, a repr of a repr: any run of backslashes before it), as
    \\xNN, \\uNNNN or \\UNNNNNNNN (either case), as a named escape (\\n), as its UTF-8 bytes escaped
    (a bytes repr), or as a JSON surrogate pair.
    """
    cp = ord(ch)
    alts = [r"\\*" + re.escape(ch)]
    hexes = ([f"x{cp:02x}"] if cp < 0x100 else []) + ([f"u{cp:04x}"] if cp < 0x10000 else []) + [f"U{cp:08x}"]
    if ch in _NAMED:
        hexes.append(_NAMED[ch])
    utf8 = ch.encode()
    if len(utf8) > 1:
        hexes.append(r"\\+".join(f"x{b:02x}" for b in utf8))
    if cp >= 0x10000:
        hi, lo = 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF)
        hexes.append(rf"u{hi:04x}\\+u{lo:04x}")
    alts.append(r"\\+(?i:" + "|".join(hexes) + ")")
    return "(?:" + "|".join(alts) + ")"


def redact(text: str, secrets: list[str]) -> str:
    """Device output shown to a technician must not carry the node's secrets, whatever the firmware prints.

    A traceback shows a secret as the repr of a string (or of a dict holding it), a log line as JSON: a key
    with a quote or a backslash in it is then not the literal text any more. Every escaped form is matched.
    """
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = re.sub("".join(_char(ch) for ch in s), "<redacted>", text)
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
