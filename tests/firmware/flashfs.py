"""A flash file system in memory for the store's power-cut and full-flash tests.

It stands in for MicroPython's `os` and `open` inside knode.ringbuf (the tests patch both into the
module), keeps every file as bytes, and journals every change, so a test can

* cut the power at any *write position* of a session: before any operation, and inside a write after
  any number of its bytes (a torn write, as FAT or a raw flash page can leave; LittleFS, which commits
  on close, never tears, so this is the harsher model). Renames, removals, truncations and mkdir are
  atomic, as on LittleFS. After the cut the files are exactly what had reached flash;
* make the flash full: blocks are counted the LittleFS way (each file takes whole `block`-byte blocks,
  a file of at most `inline` bytes lives in its directory's metadata and takes none), and a write that
  would need more blocks than `blocks` raises OSError(ENOSPC) after writing what fits;
* make an allocation fail: `memory_error_at` raises MemoryError at that operation instead.
"""

from __future__ import annotations

import errno


class PowerCut(BaseException):
    """The power went at the chosen write position (BaseException: nothing in the firmware catches it)."""


class FlashFS:
    def __init__(self, blocks: int | None = None, block: int = 4096, inline: int = 128) -> None:
        self.files: dict[str, bytearray] = {}
        self.dirs: set[str] = {""}
        self.blocks = blocks
        self.block = block
        self.inline = inline
        self.cut_at: int | None = None
        """Write position at which the power goes (see positions)."""
        self.positions = 0
        """Write positions passed so far: one per atomic operation, one per byte written."""
        self.memory_error_at: int | None = None
        self.ops = 0
        self.os = _Os(self)

    # -- accounting ----------------------------------------------------------------
    def _tick(self, n: int = 1) -> int:
        """Pass n positions; returns how many of them happen before the cut (n if none)."""
        if self.cut_at is not None and self.positions + n > self.cut_at:
            done = self.cut_at - self.positions
            self.positions = self.cut_at
            return done
        self.positions += n
        return n

    def _op(self) -> None:
        self.ops += 1
        if self.memory_error_at is not None and self.ops == self.memory_error_at:
            raise MemoryError("injected")
        if self._tick() < 1:
            raise PowerCut

    def used_blocks(self, extra: dict[str, int] | None = None) -> int:
        sizes = {p: len(d) for p, d in self.files.items()}
        sizes.update(extra or {})
        return sum(0 if n <= self.inline else -(-n // self.block) for n in sizes.values())

    # -- file system -----------------------------------------------------------------
    def open(self, path: str, mode: str = "r") -> _File:
        path = path.rstrip("/")
        if "w" in mode or "a" in mode:
            parent = path.rsplit("/", 1)[0]
            if parent not in self.dirs:
                raise OSError(errno.ENOENT, path)
            self._op()
            if "w" in mode or path not in self.files:
                self.files[path] = bytearray()
        elif path not in self.files:
            raise OSError(errno.ENOENT, path)
        return _File(self, path, mode)


class _File:
    def __init__(self, fs: FlashFS, path: str, mode: str) -> None:
        self.fs, self.path, self.mode = fs, path, mode

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self, n: int = -1) -> bytes:
        data = bytes(self.fs.files[self.path])
        return data if n < 0 else data[:n]

    def write(self, data: bytes) -> int:
        fs = self.fs
        buf = fs.files[self.path]
        n = len(data)
        if fs.blocks is not None:
            fit = n
            while fit and fs.used_blocks({self.path: len(buf) + fit}) > fs.blocks:
                fit -= 1
            if fit < n:
                take = fs._tick(fit)
                buf.extend(data[:take])
                if take < fit:
                    raise PowerCut
                raise OSError(errno.ENOSPC, "no space")
        fs.ops += 1
        if fs.memory_error_at is not None and fs.ops == fs.memory_error_at:
            raise MemoryError("injected")
        take = fs._tick(n)
        buf.extend(data[:take])
        if take < n:
            raise PowerCut
        return n


class _Os:
    """The part of MicroPython's os the firmware uses."""

    def __init__(self, fs: FlashFS) -> None:
        self.fs = fs

    def mkdir(self, path: str) -> None:
        path = path.rstrip("/")
        if path in self.fs.dirs or path in self.fs.files:
            raise OSError(errno.EEXIST, path)
        self.fs._op()
        self.fs.dirs.add(path)

    def listdir(self, path: str) -> list[str]:
        path = path.rstrip("/")
        if path not in self.fs.dirs:
            raise OSError(errno.ENOENT, path)
        return sorted(p[len(path) + 1:] for p in self.fs.files if p.rsplit("/", 1)[0] == path)

    def remove(self, path: str) -> None:
        if path not in self.fs.files:
            raise OSError(errno.ENOENT, path)
        self.fs._op()
        del self.fs.files[path]

    def rename(self, old: str, new: str) -> None:
        if old not in self.fs.files:
            raise OSError(errno.ENOENT, old)
        self.fs._op()
        self.fs.files[new] = self.fs.files.pop(old)

    def stat(self, path: str) -> tuple[int, ...]:
        if path in self.fs.files:
            return (0x8000, 0, 0, 0, 0, 0, len(self.fs.files[path]), 0, 0, 0)
        if path in self.fs.dirs:
            return (0x4000, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        raise OSError(errno.ENOENT, path)
