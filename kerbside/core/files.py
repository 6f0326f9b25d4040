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

Appending durably (the collector's spool, dead letters and sequence journal) is
the other half: `append_synced` writes every byte or none of a record, fsynced,
and cuts a failed append back off so later records never sit behind a torn one.
"""

from __future__ import annotations

import contextlib
import errno
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
        err = StorageError(f"cannot write {target}: {e.strerror or e}")
        err.errno = e.errno  # what went wrong decides the advice (the collector: "free space on that disk")
        raise err from e
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


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written: a write may take fewer bytes than offered (nearly full disk, signal).

    Raises OSError when the system refuses (ENOSPC, EIO, EROFS...) or makes no progress, never returns early.
    """
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, "write made no progress")
        view = view[n:]


def append_synced(fd: int, data: bytes, end: int) -> int:
    """Append `data` behind `end` (where the file's last complete record ends) and fsync; returns the new end.

    Why `end`: what precedes an acknowledgement must be complete and on disk, or the acknowledgement must not
    happen. A failed append (no space, read-only, I/O error; also a failed fsync, after which the kernel may have
    dropped the data) is cut back off where possible, so that no torn record sits in front of later ones and the
    space it took is free again; if even the cut fails, the next append cuts it first (the file is longer than
    `end`). The caller keeps `end` and raises nothing durable until this returns.
    """
    try:
        if os.fstat(fd).st_size != end:
            os.ftruncate(fd, end)
        os.lseek(fd, end, os.SEEK_SET)
        write_all(fd, data)
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, end)
        raise
    return end + len(data)
