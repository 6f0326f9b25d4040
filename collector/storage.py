"""What the collector's three stores share: byte budgets, and the disk they sit on.

The spool, the dead-letter store and the sequence state are each written before
messages are acknowledged. Each has a byte budget (spool.max_bytes,
dlq.max_bytes, state.max_bytes) checked before it writes, so that junk in one
cannot take the room the others need. A store at its budget raises StoreFull;
a disk that refuses a write raises OSError (ENOSPC, EROFS, EIO). The collector
treats both the same way: it stops acknowledging (the broker keeps the
messages), says so, and retries until the write succeeds.

Budgets only help if the disk can hold them: room_warnings() compares, per
filesystem, what the budgets may still claim with the space that is free.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from kerbside.core.errors import StorageError

WARN_RATIO = 0.8
"""Dead letters and sequence state log once (loudly) from this fill; the spool has spool.warn_ratio."""


class StoreFull(StorageError):
    """A store reached its byte budget; the collector stops acknowledging until there is room again."""


def existing(path: Path) -> Path:
    """The path, or its nearest ancestor that exists (a store's directory may not be made yet)."""
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path`."""
    st = os.statvfs(existing(path))
    return st.f_bavail * st.f_frsize


def room_warnings(stores: Iterable[tuple[str, Path, int, int]]) -> list[str]:
    """Where the budgets of (name, directory, max_bytes, bytes used) cannot all be met by the free space.

    Stores on one filesystem share its free space, so they are summed per filesystem (st_dev).
    """
    by_fs: dict[int, list[tuple[str, Path, int, int]]] = {}
    for store in stores:
        by_fs.setdefault(existing(store[1]).stat().st_dev, []).append(store)
    out = []
    for group in by_fs.values():
        want = sum(max(0, limit - used) for _, _, limit, used in group)
        free = free_bytes(group[0][1])
        if want > free:
            names = ", ".join(f"{name} ({path})" for name, path, _, _ in group)
            out.append(f"the filesystem holding {names} has {free} bytes free but their budgets may still take {want}: "
                       "the disk can fill before a budget is reached (then the collector stops acknowledging until "
                       "there is room); lower spool.max_bytes/dlq.max_bytes/state.max_bytes or give them more space")
    return out
