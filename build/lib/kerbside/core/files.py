"""Replacing a file atomically and durably: the one way kerbside rewrites a file in place.

Readers (the collector reading the registry, mosquitto reading its password
file on SIGHUP, a restart reading the spool cursor) must see the old file or the
new one, never half of either, and the new one must survive a power cut once
this returns. So: write a temporary file in the same directory, fsync it,
rename it over the target, fsync the directory (the rename is only durable
then).

An existing file keeps its owner, group and mode. A re-render run as root must
not leave mosquitto's `passwd` owned by root and unreadable to the mosquitto
user, and an operator's `chmod 640` + `chgrp` stays as they set it. A new file
gets `mode` from its first byte, so a secret is never readable by others, not
even for a moment.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from kerbside.core.errors import StorageError


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename, create or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o600) -> Path:
    """Replace `path` with `data`: complete and fsynced when this returns, or unchanged.

    `mode` applies to a new file only; an existing file's owner, group and mode
    are kept (StorageError if they cannot be, e.g. another user's file and we
    are not root, rather than silently handing the file to us).
    """
    target = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    try:
        _replace(target, raw, mode)
    except StorageError:
        raise
    except OSError as e:  # no room, no permission, read-only file system: say which file
        raise StorageError(f"cannot write {target}: {e.strerror or e}") from e
    return target


def _replace(target: Path, raw: bytes, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = target.stat()
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if old is None:
                os.fchmod(fd, mode)
            else:
                _keep_owner_and_mode(fd, target, old)
            f.write(raw)
            f.flush()
            os.fsync(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def _keep_owner_and_mode(fd: int, target: Path, old: os.stat_result) -> None:
    st = os.fstat(fd)
    if (old.st_uid, old.st_gid) != (st.st_uid, st.st_gid):
        try:
            os.fchown(fd, old.st_uid, old.st_gid)
        except PermissionError:
            raise StorageError(f"{target} belongs to uid {old.st_uid} gid {old.st_gid}; replacing it as uid "
                               f"{os.geteuid()} would change that: run as root or as its owner") from None
    os.fchmod(fd, stat.S_IMODE(old.st_mode))  # after fchown, which may clear set-id bits
