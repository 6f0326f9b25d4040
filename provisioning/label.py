"""The node's label: a printable PNG with a QR code of its id and site, for `kerbside provision --label`.

A technician sticks it on the enclosure; whoever climbs the lamp post later
scans it instead of reading eight hex digits off a wet box, and the QR's text
is what `kerbside fleet watch` wants. The QR comes from segno (a maintained,
dependency-free QR encoder) with error correction level M, which survives a
scratched label; the picture is drawn with Pillow at print resolution, so a
label printer prints it at its true size (LABEL_MM at DPI).
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from pathlib import Path

import segno
from PIL import Image, ImageDraw, ImageFont

from kerbside.core.files import atomic_write

SCHEME = "kerbside:node:"
LABEL_MM = (62.0, 29.0)
"""Width and height: the common 62 mm continuous label roll, cut at 29 mm."""
DPI = 300
QUIET = 4
"""Modules of white around the QR, as the standard asks (scanners need it)."""
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def payload(device_id: str, site: str) -> str:
    """The QR's text: `kerbside:node:<id>?site=<site, percent-encoded>` (readable, and parseable back)."""
    return f"{SCHEME}{device_id}?" + urllib.parse.urlencode({"site": site})


def parse(text: str) -> tuple[str, str]:
    """(device id, site) from a scanned label."""
    if not text.startswith(SCHEME):
        raise ValueError(f"not a kerbside label: {text[:60]!r}")
    device, _, query = text[len(SCHEME):].partition("?")
    return device, urllib.parse.parse_qs(query).get("site", [""])[0]


def _px(mm: float) -> int:
    return round(mm / 25.4 * DPI)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int, lines: int) -> list[str]:
    """Words onto at most `lines` lines of `width` pixels; what does not fit ends in an ellipsis."""
    out: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width:
            line = trial
            continue
        if line:
            out.append(line)
        line = word
    if line:
        out.append(line)
    if len(out) > lines:
        out = out[:lines]
        out[-1] += "…"
    return [_fit(draw, s, font, width) for s in out]


def _fit(draw: ImageDraw.ImageDraw, s: str, font: Font, width: int) -> str:
    while draw.textlength(s, font=font) > width and len(s) > 1:
        s = s[:-2] + "…"
    return s


def render(device_id: str, kit: str, site: str, zone: str = "", when: dt.date | None = None) -> Image.Image:
    """The label as a 1-bit image: QR on the left, id, site, kit and zone, date on the right."""
    w, h = _px(LABEL_MM[0]), _px(LABEL_MM[1])
    img = Image.new("1", (w, h), 1)
    draw = ImageDraw.Draw(img)
    qr = segno.make(payload(device_id, site), error="m", micro=False)
    matrix = qr.matrix
    side = len(matrix) + 2 * QUIET
    module = max(1, (h - 2 * _px(1.0)) // side)
    x0 = y0 = (h - module * side) // 2
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            if dark:
                x, y = x0 + (QUIET + c) * module, y0 + (QUIET + r) * module
                draw.rectangle((x, y, x + module - 1, y + module - 1), fill=0)
    left = x0 + side * module + _px(1.0)
    width = w - left - _px(2.0)
    big = ImageFont.load_default(size=_px(5.2))
    mid = ImageFont.load_default(size=_px(3.0))
    small = ImageFont.load_default(size=_px(2.4))
    y = _px(2.5)
    draw.text((left, y), device_id, font=big, fill=0)
    y += _px(7.0)
    for line in _wrap(draw, site, mid, width, 3):
        draw.text((left, y), line, font=mid, fill=0)
        y += _px(3.8)
    y = h - _px(7.5)
    draw.text((left, y), _fit(draw, " · ".join(p for p in (kit, zone) if p), small, width), font=small, fill=0)
    draw.text((left, y + _px(3.2)), f"kerbside · {(when or dt.date.today()).isoformat()}", font=small, fill=0)
    return img


def write(directory: Path, device_id: str, kit: str, site: str, zone: str = "") -> Path:
    """<directory>/<id>.png, replaced atomically (a re-run prints the same label again)."""
    import io

    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    render(device_id, kit, site, zone).save(buf, format="PNG", dpi=(DPI, DPI))
    path = directory / f"{device_id}.png"
    atomic_write(path, buf.getvalue())
    return path
