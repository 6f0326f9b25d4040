"""Finding the node's serial port, so a technician with one node plugged in never has to type it."""

from __future__ import annotations

from dataclasses import dataclass

from serial.tools import list_ports

from kerbside.core.errors import DeviceError


class PortError(DeviceError, RuntimeError):
    pass


@dataclass(frozen=True)
class Candidate:
    device: str
    description: str


def explain_open_error(port: str, error: Exception) -> str:
    """Why a serial port would not open, as the next thing the technician should try."""
    text = str(error)
    if "Errno 2" in text or "No such file" in text:
        hint = "no such port: is the node plugged in (with a data cable)? Run without --port to have it found"
    elif "Errno 13" in text or "Permission denied" in text:
        hint = "permission denied: add yourself to the dialout group (`sudo usermod -aG dialout $USER`, then log in again)"
    elif "Errno 16" in text or "busy" in text.lower():
        hint = "the port is busy: close the serial monitor, Thonny or mpremote using it"
    else:
        hint = text
    return f"cannot open {port}: {hint}"


def candidates() -> list[Candidate]:
    """USB serial ports (USB-UART bridges and native USB); built-in ttyS ports are never a node."""
    return [Candidate(p.device, p.description or p.device) for p in sorted(list_ports.comports(), key=lambda p: p.device)
            if p.vid is not None]


def choose(explicit: str | None, found: list[Candidate] | None = None) -> str:
    if explicit:
        return explicit
    found = candidates() if found is None else found
    if not found:
        raise PortError("no USB serial port found. Plug the node in with a data USB cable (many cables only charge), "
                        "check `dmesg | tail` for a new ttyUSB/ttyACM device, and that you are in the dialout group.")
    if len(found) > 1:
        listing = "\n".join(f"  {c.device}  ({c.description})" for c in found)
        raise PortError(f"several USB serial ports; pick the node's with --port:\n{listing}")
    return found[0].device
