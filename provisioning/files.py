"""Writing files that hold secrets: created 0600 from the first byte, replaced atomically.

Creating the file and chmod-ing it afterwards would leave a window in which
another local user could open it; a half-written password file would lock
the whole fleet out of the broker on its next reload.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_private(path: Path, data: bytes | str) -> Path:
    return write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes | str) -> Path:
    return write_atomic(path, data, 0o644)
