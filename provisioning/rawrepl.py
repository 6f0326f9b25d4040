"""A small client for MicroPython's raw REPL over a serial port.

mpremote has no supported Python API, and provisioning needs only four
things: run code, read its output and exceptions, and move files with a hash
check. Code is sent as ASCII (the raw REPL drops bytes above 127), files as
base64, in slices a board's UART buffer can swallow.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import serial

from kerbside.core.errors import DeviceError
from kerbside.provisioning.ports import explain_open_error

BANNER = b"raw REPL; CTRL-B to exit\r\n>"
SLICE = 256
"""Bytes per serial write: an ESP32's REPL loses input it cannot buffer."""
CHUNK = 512
"""File bytes per write() call on the device: small enough for a 64 KB heap."""
CHUNKS_PER_EXEC = 8

_PRELUDE = """\
import os, binascii, hashlib
def _ks_hash(p):
    h = hashlib.sha256()
    try:
        f = open(p, 'rb')
    except OSError:
        return '-'
    while True:
        b = f.read(512)
        if not b:
            break
        h.update(b)
    f.close()
    return binascii.hexlify(h.digest()).decode()
def _ks_mkdirs(p):
    d = ''
    for part in p.split('/'):
        if not part:
            continue
        d += '/' + part
        try:
            os.mkdir(d)
        except OSError:
            pass
def _ks_rm(p):
    try:
        os.remove(p)
    except OSError:
        pass
"""


class ReplError(DeviceError, RuntimeError):
    """The board did not behave like a MicroPython REPL."""


class DeviceException(ReplError):
    """Code raised on the board; the message is MicroPython's traceback."""


class TransferError(ReplError):
    pass


class RawRepl:
    def __init__(self, port: str, baud: int = 115200, timeout: float = 10.0, write_pause: float = 0.01,
                 opener: Callable[..., Any] | None = None) -> None:
        self.port = port
        self.baud = baud
        self.timeout = timeout
        self.write_pause = write_pause
        self._opener = opener
        self._serial: Any = None
        self._rx = bytearray()

    def __enter__(self) -> RawRepl:
        self.open()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        try:
            if self._opener is not None:
                self._serial = self._opener(self.port, self.baud)
            else:
                s = serial.Serial()
                s.port, s.baudrate, s.timeout = self.port, self.baud, 0.05
                # Asserted RTS holds an ESP32 dev board in reset through its auto-reset circuit.
                s.dtr = False
                s.rts = False
                s.open()
                self._serial = s
        except serial.SerialException as e:
            raise ReplError(explain_open_error(self.port, e)) from e
        self.enter()

    def close(self) -> None:
        if self._serial is None:
            return
        try:
            self._serial.write(b"\x02")  # back to the friendly REPL, so a terminal shows a prompt
        except (serial.SerialException, OSError):
            pass
        self._serial.close()
        self._serial = None

    def _write(self, data: bytes) -> None:
        for i in range(0, len(data), SLICE):
            self._serial.write(data[i:i + SLICE])
            if self.write_pause and i + SLICE < len(data):
                time.sleep(self.write_pause)

    def _read_until(self, ending: bytes, timeout: float, what: str) -> bytes:
        """Bytes up to and including `ending`; whatever came after stays buffered for the next read."""
        deadline = time.monotonic() + timeout
        while (i := self._rx.find(ending)) < 0:
            if time.monotonic() > deadline:
                tail = bytes(self._rx[-200:]).decode("utf-8", "replace")
                raise ReplError(f"no answer from {self.port} while waiting for {what} after {timeout:.0f} s (got {tail!r})")
            self._rx += self._serial.read(max(1, self._serial.in_waiting))
        got = bytes(self._rx[:i + len(ending)])
        del self._rx[:i + len(ending)]
        return got

    def enter(self) -> None:
        """Interrupt whatever runs (main.py, a REPL line) and switch to raw mode."""
        for attempt in range(2):
            self._serial.write(b"\r\x03\x03")
            self._serial.reset_input_buffer()
            self._rx.clear()
            self._serial.write(b"\r\x01")
            try:
                self._read_until(BANNER, min(self.timeout, 3.0), "the raw REPL prompt")
                break
            except ReplError:
                if attempt:
                    raise ReplError(
                        f"no MicroPython REPL on {self.port}: is MicroPython flashed (`kerbside flash`), "
                        "is this the right port, and is no other program attached to it?"
                    ) from None
        self.exec(_PRELUDE)

    def soft_reset(self, timeout: float | None = None) -> None:
        """Restart MicroPython in place (Ctrl-D at the raw prompt), as the board does after a reset.

        Whatever main.py or an earlier command imported is forgotten, so the next import loads the files on
        flash now, not the modules of the firmware that ran before. boot.py runs again, main.py does not
        (raw REPL mode survives the reset); the helpers are sent again.
        """
        wait = self.timeout if timeout is None else timeout
        self._serial.write(b"\x04")
        self._read_until(b"soft reboot\r\n", wait, "the board to restart (soft reset)")
        self._read_until(BANNER, wait, "the raw REPL prompt after the soft reset")
        self.exec(_PRELUDE)

    def exec(self, code: str, timeout: float | None = None) -> str:
        """Run code on the board and return what it printed; raise DeviceException on an exception."""
        try:
            raw = code.encode("ascii")
        except UnicodeEncodeError as e:
            raise ValueError("raw REPL code must be ASCII (send text as base64 or escapes)") from e
        self._write(raw)
        self._serial.write(b"\x04")
        wait = self.timeout if timeout is None else timeout
        ok = self._read_until(b"OK", wait, "the raw REPL to accept code")
        if ok != b"OK":
            raise ReplError(f"unexpected reply from {self.port}: {ok[-80:]!r}")
        out = self._read_until(b"\x04", wait, "the code's output")[:-1]
        err = self._read_until(b"\x04", wait, "the code's exit status")[:-1]
        self._read_until(b">", wait, "the next prompt")
        if err:
            raise DeviceException(err.decode("utf-8", "replace").strip())
        return out.decode("utf-8", "replace")

    # Files ---------------------------------------------------------------

    def sha256(self, path: str) -> str | None:
        """Hex digest of a file on the board, None if it does not exist."""
        out = self.exec(f"print(_ks_hash({path!r}))").strip()
        return None if out == "-" else out

    def mkdirs(self, path: str) -> None:
        self.exec(f"_ks_mkdirs({path!r})")

    def remove(self, path: str) -> None:
        self.exec(f"_ks_rm({path!r})")

    def listdir(self, path: str) -> list[str]:
        out = self.exec(f"try:\n    print('\\n'.join(os.listdir({path!r})))\nexcept OSError:\n    pass\n")
        return [line for line in out.splitlines() if line]

    def read_file(self, path: str) -> bytes | None:
        code = (
            f"try:\n    _f = open({path!r}, 'rb')\nexcept OSError:\n    print('-')\nelse:\n"
            "    while True:\n        _b = _f.read(384)\n        if not _b:\n            break\n"
            "        print(binascii.b2a_base64(_b).decode().strip())\n    _f.close()\n    print('.')\n"
        )
        out = self.exec(code).split()
        if out == ["-"]:
            return None
        if not out or out[-1] != ".":
            raise TransferError(f"reading {path} from the board was cut short")
        return b"".join(base64.b64decode(line) for line in out[:-1])

    def write_file(self, path: str, data: bytes, progress: Callable[[int], None] | None = None) -> None:
        """Write to path.part, check its SHA-256 on the board, then rename over path."""
        parent = path.rsplit("/", 1)[0]
        if parent:
            self.mkdirs(parent)
        part = path + ".part"
        self.exec(f"_f = open({part!r}, 'wb')")
        try:
            step = CHUNK * CHUNKS_PER_EXEC
            for off in range(0, len(data), step):
                block = data[off:off + step]
                lines = [
                    f"_f.write(binascii.a2b_base64({base64.b64encode(block[i:i + CHUNK])!r}))"
                    for i in range(0, len(block), CHUNK)
                ]
                self.exec("\n".join(lines))
                if progress:
                    progress(len(block))
        finally:
            self.exec("_f.close()")
        want = hashlib.sha256(data).hexdigest()
        got = self.sha256(part)
        if got != want:
            self.remove(part)
            raise TransferError(f"{path}: hash mismatch after upload (board has {got}, expected {want}); retry, "
                                "and if it persists try another USB cable or a lower baud rate")
        self.exec(f"_ks_rm({path!r})\nos.rename({part!r}, {path!r})")
