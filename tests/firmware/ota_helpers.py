"""Releases for the update tests: signed with a key made for the test run, from small or real firmware files."""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from kerbside.core import release as rel
from knode import ota_receive

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
MAIN = FIRMWARE / "main.py"
PACKAGE = "/lib/knode/"


def tiny_files(tag: str, size: int = 3000) -> list[tuple[str, bytes]]:
    """The modules every release must hold, as recognisable filler of `size` bytes each."""
    out = []
    for name in ota_receive.NEEDED:
        line = f"# {tag} {name}\n".encode()
        out.append((f"{PACKAGE}{name}.py", (line * (size // len(line) + 1))[:size]))
    return out


def real_files(fw: str, node_extra: str = "") -> list[tuple[str, bytes]]:
    """The real firmware package as source, with FW = fw in node.py and node_extra appended to it."""
    out = []
    package = FIRMWARE / "knode"
    for src in sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts):
        data = src.read_text()
        if src.name == "node.py" and src.parent == package:
            data, n = re.subn(r'^FW = ".*"$', f'FW = "{fw}"', data, flags=re.M)
            assert n == 1
            data += node_extra
        out.append((PACKAGE + src.relative_to(package).as_posix(), data.encode()))
    return out


def release(key: ec.EllipticCurvePrivateKey, seq: int, fw: str, files: list[tuple[str, bytes]]) -> rel.Release:
    return rel.build(files, seq, fw, key)


def as_model(r: rel.Release) -> dict:
    """A release as the power-cut model (tests/firmware/ota_model.py) takes it."""
    return {"fw": r.fw, "seq": r.seq, "commands": list(r.commands()),
            "files": [(p[len(PACKAGE):], data) for p, data in zip(r.paths, r.files, strict=True)]}


def ota_cmd(cmd_id: int, args: dict) -> dict:
    return {"v": 1, "cmd": cmd_id, "op": "ota", "args": args}
