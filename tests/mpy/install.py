"""Install the MicroPython WebAssembly VM that the tests run firmware under, from package-lock.json, without npm.

Why not `npm ci`: the VM is one npm package with no dependencies, and npm is the part of a Node.js install
that breaks most often on developers' machines (NodeSource's nodejs conflicts with Debian's npm; an npm
upgraded in place over a packaged one leaves modules missing). Only `node` is needed to run the VM.
This reads the lock, downloads each pinned tarball from the npm registry, checks it against the lock's
`integrity` hash (the same check npm does) and unpacks it under node_modules/. Standard library only: it
runs before the virtualenv has anything in it.

    python3 tests/mpy/install.py            # idempotent: a package already unpacked at its version is kept
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGISTRY = os.environ.get("npm_config_registry", "https://registry.npmjs.org").rstrip("/")


def tarball_url(name: str, version: str, entry: dict) -> str:
    if entry.get("resolved"):
        return str(entry["resolved"])
    return f"{REGISTRY}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def check_integrity(data: bytes, integrity: str, what: str) -> None:
    """Subresource-integrity check: any one of the listed hashes must match."""
    for item in integrity.split():
        algo, _, want = item.partition("-")
        if algo in ("sha512", "sha384", "sha256"):
            if base64.b64encode(hashlib.new(algo, data).digest()).decode() == want:
                return
    raise SystemExit(f"{what}: downloaded tarball does not match the lock's integrity {integrity[:40]}…; not installed")


def unpack(data: bytes, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts[1:]  # npm tarballs hold everything under package/
            if not parts or m.issym() or m.islnk() or ".." in parts or not (m.isfile() or m.isdir()):
                continue
            target = tmp.joinpath(*parts)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            assert src is not None
            target.write_bytes(src.read())
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def main() -> int:
    lock = json.loads((HERE / "package-lock.json").read_text())
    for key, entry in lock["packages"].items():
        if not key.startswith("node_modules/"):
            continue
        name, version = key[len("node_modules/"):], entry["version"]
        dest = HERE / key
        manifest = dest / "package.json"
        if manifest.exists() and json.loads(manifest.read_text()).get("version") == version:
            continue
        url = tarball_url(name, version, entry)
        print(f"installing {name}@{version} from {url}")
        with urllib.request.urlopen(url, timeout=120) as r:
            data = r.read()
        check_integrity(data, entry["integrity"], f"{name}@{version}")
        unpack(data, dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
