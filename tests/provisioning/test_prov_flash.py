"""Flashing at the esptool API boundary: a fake stands in for esptool.cmds, raising esptool's own errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from esptool.util import FatalError
from serial import SerialException

from kerbside.provisioning.flash import FlashError, check_image, flash


def image(tmp_path: Path, chip_id: int = 0, magic: int = 0xE9, name: str = "ESP32_GENERIC-v1.27.0.bin") -> Path:
    header = bytes([magic, 3, 2, 0x20]) + bytes(8) + chip_id.to_bytes(2, "little") + bytes(2)
    path = tmp_path / name
    path.write_bytes(header + bytes(4096))
    return path


@dataclass
class FakePort:
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeEsp:
    CHIP_NAME: str
    calls: list[str]
    _port: FakePort = field(default_factory=FakePort)
    baud: int = 115200

    def change_baud(self, baud: int) -> None:
        self.calls.append(f"change_baud {baud}")
        self.baud = baud


@dataclass
class FakeEsptool:
    """The subset of esptool.cmds that provisioning.flash uses, with esptool 5's signatures."""

    chip: str = "ESP32"
    detect_error: Exception | None = None
    write_fails_above: int | None = None
    calls: list[str] = field(default_factory=list)
    ports: list[FakePort] = field(default_factory=list)

    def detect_chip(self, port: str, baud: int = 115200, connect_mode: str = "default-reset") -> FakeEsp:
        self.calls.append(f"detect_chip {port} {baud}")
        if self.detect_error:
            raise self.detect_error
        esp = FakeEsp(self.chip, self.calls)
        self.ports.append(esp._port)
        return esp

    def run_stub(self, esp: FakeEsp) -> FakeEsp:
        self.calls.append("run_stub")
        return esp

    def attach_flash(self, esp: FakeEsp) -> None:
        self.calls.append("attach_flash")

    def erase_flash(self, esp: FakeEsp) -> None:
        self.calls.append("erase_flash")

    def write_flash(self, esp: FakeEsp, addr_data: list[tuple[int, str]]) -> None:
        (offset, path), = addr_data
        self.calls.append(f"write_flash {offset:#x} {Path(path).name}")
        if self.write_fails_above is not None and esp.baud > self.write_fails_above:
            raise FatalError("Serial data stream stopped: Possible serial noise or corruption.")

    def reset_chip(self, esp: FakeEsp, reset_mode: str = "hard-reset") -> None:
        self.calls.append(f"reset_chip {reset_mode}")


def test_happy_path_call_order(tmp_path: Path) -> None:
    api = FakeEsptool()
    done = flash("/dev/ttyUSB0", image(tmp_path), baud=460800, api=api)
    assert api.calls == ["detect_chip /dev/ttyUSB0 115200", "run_stub", "change_baud 460800", "attach_flash",
                         "erase_flash", "write_flash 0x1000 ESP32_GENERIC-v1.27.0.bin", "reset_chip hard-reset"]
    assert (done.chip, done.baud, done.offset, done.size) == ("ESP32", 460800, 0x1000, 4112)
    assert all(p.closed for p in api.ports)


def test_esp32_s3_is_written_at_zero_and_no_erase_on_request(tmp_path: Path) -> None:
    api = FakeEsptool(chip="ESP32-S3")
    flash("/dev/ttyACM0", image(tmp_path, chip_id=9), baud=115200, erase=False, api=api)
    assert api.calls == ["detect_chip /dev/ttyACM0 115200", "run_stub", "attach_flash",
                         "write_flash 0x0 ESP32_GENERIC-v1.27.0.bin", "reset_chip hard-reset"]


def test_link_errors_retry_at_lower_baud(tmp_path: Path) -> None:
    api = FakeEsptool(write_fails_above=230400)
    messages: list[str] = []
    done = flash("/dev/ttyUSB0", image(tmp_path), baud=921600, api=api, say=messages.append)
    assert done.baud == 230400
    bauds = [c for c in api.calls if c.startswith("change_baud")]
    assert bauds == ["change_baud 921600", "change_baud 460800", "change_baud 230400"]
    assert sum("retrying slower" in m for m in messages) == 2
    assert all(p.closed for p in api.ports) and len(api.ports) == 3


def test_link_errors_at_every_baud_blame_the_cable(tmp_path: Path) -> None:
    api = FakeEsptool(write_fails_above=0)
    with pytest.raises(FlashError, match=r"even at 115200 baud: use a shorter or better USB cable"):
        flash("/dev/ttyUSB0", image(tmp_path), baud=460800, api=api)
    assert api.calls.count("erase_flash") == 3


def test_cannot_enter_bootloader_names_the_buttons(tmp_path: Path) -> None:
    api = FakeEsptool(detect_error=FatalError("Failed to connect to Espressif device: No serial data received.\n"
                                              "For troubleshooting steps visit: https://docs.espressif.com/"))
    with pytest.raises(FlashError, match=r"Hold the BOOT \(IO0\) button, tap EN \(RST\), release BOOT"):
        flash("/dev/ttyUSB0", image(tmp_path), api=api)
    assert api.calls == ["detect_chip /dev/ttyUSB0 115200"], "no retry at other bauds: the chip never answered"


def test_wrong_boot_mode_names_the_buttons(tmp_path: Path) -> None:
    api = FakeEsptool(detect_error=FatalError("Failed to connect to ESP32: Wrong boot mode detected (0x13)! "
                                              "The chip needs to be in download mode."))
    with pytest.raises(FlashError, match="BOOT"):
        flash("/dev/ttyUSB0", image(tmp_path), api=api)


@pytest.mark.parametrize("error,message", [
    ("could not open port '/dev/ttyUSB7': [Errno 2] No such file or directory: '/dev/ttyUSB7'", "is the node plugged in"),
    ("could not open port '/dev/ttyUSB0': [Errno 13] Permission denied: '/dev/ttyUSB0'", "dialout group"),
    ("could not open port '/dev/ttyUSB0': [Errno 16] Device or resource busy: '/dev/ttyUSB0'", "close the serial monitor"),
])
def test_port_problems(tmp_path: Path, error: str, message: str) -> None:
    api = FakeEsptool(detect_error=SerialException(error))
    with pytest.raises(FlashError, match=message):
        flash("/dev/ttyUSB0", image(tmp_path), api=api)


def test_wrong_chip_refused_before_erasing(tmp_path: Path) -> None:
    api = FakeEsptool(chip="ESP32-S3")
    with pytest.raises(FlashError, match=r"this node is an ESP32-S3 but .* is built for ESP32"):
        flash("/dev/ttyUSB0", image(tmp_path, chip_id=0), api=api)
    assert "erase_flash" not in api.calls and api.ports[0].closed


@pytest.mark.parametrize("kwargs,message", [
    ({"magic": 0x7F, "name": "micropython.elf"}, "not an ESP firmware image"),
    ({"chip_id": 5}, r"chip id 5 \(ESP32-C3\)"),
    ({"chip_id": 77}, r"chip id 77 \(unknown\)"),
])
def test_bad_images_refused_before_touching_the_port(tmp_path: Path, kwargs: dict, message: str) -> None:
    api = FakeEsptool()
    with pytest.raises(FlashError, match=message):
        flash("/dev/ttyUSB0", image(tmp_path, **kwargs), api=api)
    assert api.calls == []


def test_missing_image_says_where_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(FlashError, match=r"micropython\.org/download"):
        check_image(tmp_path / "nope.bin")


def test_a_port_that_answers_but_is_no_esp32_bootloader_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Detection failed with garbage from the port: not a link to retry slower, and not only the BOOT button."""
    from serial.tools import list_ports

    @dataclass
    class Port:
        device: str = "/dev/ttyACM0"
        vid: int = 0x2341
        pid: int = 0x0043
        description: str = "Arduino Uno"

    monkeypatch.setattr(list_ports, "comports", lambda: [Port()])
    api = FakeEsptool(detect_error=FatalError("Failed to connect to Espressif device: Invalid head of packet (0x08): "
                                              "Possible serial noise or corruption."))
    with pytest.raises(FlashError) as e:
        flash("/dev/ttyACM0", image(tmp_path), api=api)
    assert "answered, but not as an ESP32's bootloader does: it is Arduino Uno (USB 2341:0043, not a USB-serial bridge" \
        in str(e.value) and "This is not an ESP32 node" in str(e.value)
    assert api.calls == ["detect_chip /dev/ttyACM0 115200"]  # no retry at lower bauds


def test_an_esp8266_is_not_a_node(tmp_path: Path) -> None:
    api = FakeEsptool(chip="ESP8266")
    with pytest.raises(FlashError, match="this is an ESP8266, not an ESP32"):
        flash("/dev/ttyUSB0", image(tmp_path), api=api)
    assert "erase_flash" not in api.calls
