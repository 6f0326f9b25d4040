"""Flashing MicroPython onto a node with esptool's Python API.

The esptool API's messages are written for firmware developers ("Failed to
connect to ESP32: No serial data received"); a technician on a ladder needs
to know which button to hold, or that the port is not a node at all. So
every failure is translated here into what to do next, a flaky USB link is
retried at a lower baud rate by itself, and esptool's own notes and warnings
("Chip was NOT reset", "Failed to get VID/PID") stay off the technician's
terminal unless they ask for them (--verbose).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from kerbside.core.errors import DeviceError
from kerbside.provisioning.ports import explain_open_error

ROM_BAUD = 115200
BAUDS = (921600, 460800, 230400, 115200)
IMAGE_MAGIC = 0xE9
IMAGE_CHIPS = {0: "ESP32", 2: "ESP32-S2", 9: "ESP32-S3", 5: "ESP32-C3", 13: "ESP32-C6"}
"""Chip id in an ESP image's extended header (byte 12)."""
OFFSETS = {"ESP32": 0x1000, "ESP32-S2": 0x1000, "ESP32-S3": 0x0}
"""Where a MicroPython .bin starts; the firmware is built for these (mpy-cross -march=xtensawin)."""

BOOTLOADER_HINT = (
    "the chip did not enter its bootloader. Hold the BOOT (IO0) button, tap EN (RST), release BOOT, then run "
    "the command again. If it still fails: try another USB cable or port, and close any serial monitor."
)
ESP_BRIDGES = {0x303A: "Espressif native USB", 0x10C4: "Silicon Labs CP210x", 0x1A86: "WCH CH340/CH9102",
               0x0403: "FTDI"}
"""USB vendors of the serial bridges ESP32 boards carry: a port of another vendor is no node."""
LINK_ERRORS = ("Serial data stream stopped", "Invalid head of packet", "Timed out", "corrupt", "checksum",
               "Packet content transfer stopped", "MD5 of file does not match")


class FlashError(DeviceError, RuntimeError):
    pass


@dataclass(frozen=True)
class Flashed:
    port: str
    chip: str
    baud: int
    offset: int
    image: Path
    size: int


def check_image(image: Path) -> str:
    """The chip an image was built for; refuse anything that is not an ESP firmware image."""
    try:
        head = image.read_bytes()[:16]
    except FileNotFoundError:
        raise FlashError(f"firmware image {image} not found. Download the ESP32_GENERIC .bin for MicroPython 1.27 "
                         "from https://micropython.org/download/ and pass it with --firmware") from None
    if len(head) < 16 or head[0] != IMAGE_MAGIC:
        raise FlashError(f"{image} is not an ESP firmware image (.bin starting with 0xE9): did you pass the .uf2, "
                         ".elf or .zip by mistake?")
    chip_id = int.from_bytes(head[12:14], "little")
    chip = IMAGE_CHIPS.get(chip_id)
    if chip not in OFFSETS:
        raise FlashError(f"{image} is built for chip id {chip_id} ({chip or 'unknown'}); kerbside nodes are "
                         f"{', '.join(OFFSETS)}")
    return chip


def _explain(e: Exception, port: str) -> FlashError:
    text = str(e)
    if "could not open port" in text:
        return FlashError(explain_open_error(port, e))
    if "Failed to connect" in text or "Wrong boot mode" in text or "No serial data received" in text:
        return FlashError(f"{port}: {BOOTLOADER_HINT}")
    return FlashError(f"{port}: esptool: {text.splitlines()[0] if text else type(e).__name__}")


def describe_port(port: str) -> str:
    """What the port is, from USB, when pyserial can tell: "a CP2102 (USB 10c4:ea60, ...)"."""
    from serial.tools import list_ports

    for p in list_ports.comports():
        if p.device == port and p.vid is not None:
            kind = ESP_BRIDGES.get(p.vid)
            what = f"a USB-serial bridge ESP32 boards use ({kind})" if kind else "not a USB-serial bridge ESP32 boards use"
            return f"{p.description or p.device} (USB {p.vid:04x}:{p.pid or 0:04x}, {what})"
    return ""


def _not_an_esp32(e: Exception, port: str) -> FlashError:
    """detect_chip failed: nothing answered, or something that is not an ESP32's bootloader did."""
    text = str(e)
    if "could not open port" in text:
        return FlashError(explain_open_error(port, e))
    what = describe_port(port)
    if "No serial data received" in text or "Wrong boot mode" in text:
        return FlashError(f"{port}: no ESP32 bootloader answered{f' on {what}' if what else ''}. If this is the node, "
                          f"{BOOTLOADER_HINT} If it is not, pick the node's port with --port.")
    return FlashError(f"{port} answered, but not as an ESP32's bootloader does{f': it is {what}' if what else ''}. This is "
                      "not an ESP32 node (kerbside nodes are ESP32, ESP32-S2 or ESP32-S3 boards): pick the node's port "
                      f"with --port. If it is one, {BOOTLOADER_HINT} (esptool: {text.splitlines()[0] if text else e!r})")


@dataclass
class _Quiet:
    """esptool's logger while a technician flashes: what it says is kept here, off the terminal."""

    lines: list[str] = field(default_factory=list)

    def print(self, *args: Any, **kwargs: Any) -> None:
        self.lines.append(" ".join(str(a) for a in args))

    def note(self, message: str, *a: Any, **k: Any) -> None:
        self.lines.append(f"Note: {message}")

    def warning(self, message: str, *a: Any, **k: Any) -> None:
        self.lines.append(f"Warning: {message}")

    def error(self, message: str, *a: Any, **k: Any) -> None:
        self.lines.append(f"Error: {message}")

    def stage(self, *a: Any, **k: Any) -> None:
        pass

    def progress_bar(self, *a: Any, **k: Any) -> None:
        pass

    def set_verbosity(self, *a: Any, **k: Any) -> None:
        pass


@contextlib.contextmanager
def quiet_esptool(verbose: bool) -> Iterator[_Quiet]:
    """Route esptool's output into a list (unless verbose), and silence Python warnings it triggers."""
    kept = _Quiet()
    if verbose:
        yield kept
        return
    from esp_pylib.logger import EspLog
    from esptool.logger import TemplateLogger, log

    quiet = type("QuietEsptool", (_Quiet, TemplateLogger), {})()
    quiet.lines = kept.lines
    before = EspLog.instance
    # Some esptool modules bound the default logger's warn/note at import (PrintOnce(log.warn)): silence it too.
    verbosity = getattr(before, "_verbosity", None)
    if before is not None and verbosity is not None:
        before._verbosity = 0  # Verbosity.SILENT
    log.set_logger(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield kept
    finally:
        EspLog.instance = before
        if before is not None and verbosity is not None:
            before._verbosity = verbosity


def _is_link_error(e: Exception) -> bool:
    """Data corrupted on an established link (worth a slower retry), not a chip that never answered."""
    text = str(e)
    if "Failed to connect" in text or "Wrong boot mode" in text or "could not open port" in text:
        return False
    return any(s.lower() in text.lower() for s in LINK_ERRORS)


def flash(port: str, image: Path, baud: int = 460800, erase: bool = True, api: ModuleType | Any = None,
          say: Callable[[str], None] = lambda _m: None, verbose: bool = False) -> Flashed:
    """Detect, check the chip, erase, write (esptool verifies every block) and reset; retry lower bauds on link errors."""
    with quiet_esptool(verbose):
        return _flash(port, image, baud, erase, api, say)


def _flash(port: str, image: Path, baud: int, erase: bool, api: ModuleType | Any, say: Callable[[str], None]) -> Flashed:
    if api is None:
        from esptool import cmds

        api = cmds
    from esptool.util import FatalError
    from serial import SerialException

    image_chip = check_image(image)
    size = image.stat().st_size
    bauds = [b for b in BAUDS if b <= baud] or [ROM_BAUD]
    last: Exception | None = None
    for rate in bauds:
        esp = None
        try:
            say(f"connecting to {port}")
            try:
                esp = api.detect_chip(port=port, baud=ROM_BAUD)
            except (FatalError, SerialException, OSError) as e:
                raise _not_an_esp32(e, port) from e  # detection runs at the ROM's baud: no slower retry helps
            chip = esp.CHIP_NAME
            if chip not in OFFSETS:
                raise FlashError(f"{port}: this is an {chip}, not an ESP32: kerbside nodes are {', '.join(OFFSETS)} boards")
            if chip != image_chip:
                raise FlashError(f"this node is an {chip} but {image.name} is built for {image_chip}: download the "
                                 f"{chip.replace('-', '')} image, or check you picked the right node")
            esp = api.run_stub(esp)
            if rate > ROM_BAUD:
                say(f"switching to {rate} baud")
                esp.change_baud(rate)
            api.attach_flash(esp)
            if erase:
                say("erasing flash (about 10 s)")
                api.erase_flash(esp)
            say(f"writing {image.name} ({size // 1024} KiB) at {OFFSETS[chip]:#x} and verifying")
            api.write_flash(esp, [(OFFSETS[chip], str(image))])
            api.reset_chip(esp, "hard-reset")
            return Flashed(port, chip, rate, OFFSETS[chip], image, size)
        except FlashError:
            raise
        except (FatalError, SerialException, OSError) as e:
            if _is_link_error(e) and rate != bauds[-1]:
                say(f"link errors at {rate} baud ({str(e).splitlines()[0]}); retrying slower")
                last = e
                continue
            if _is_link_error(e):
                raise FlashError(f"{port}: the USB link keeps corrupting data even at {rate} baud: use a shorter or "
                                 f"better USB cable, or plug in directly instead of through the hub ({e})") from e
            raise _explain(e, port) from e
        finally:
            if esp is not None:
                _close(esp)
    raise FlashError(f"{port}: could not flash at any baud rate ({last})")


def _close(esp: Any) -> None:
    port = getattr(esp, "_port", None)
    if port is not None:
        try:
            port.close()
        except OSError:
            pass
