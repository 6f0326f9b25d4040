"""Headless Chromium for the report's first page: a screenshot (docs/report-first-page.png is made with it) and a PDF.

    python tests/analysis/chromium.py demo-out/report.html docs/report-first-page.png
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WINDOW = (1100, 1500)
"""CSS pixels: the report's 1000-px column with its margins, and about what a laptop screen shows of page 1."""


def _run(*args: str) -> None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise FileNotFoundError("chromium is missing: `make test` installs it (Debian package chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                        f"--user-data-dir={profile}", *args], check=True, capture_output=True, timeout=120)


def screenshot(html: Path, png: Path, window: tuple[int, int] = WINDOW) -> None:
    _run(f"--screenshot={png}", f"--window-size={window[0]},{window[1]}", html.resolve().as_uri())


def pdf(html: Path, out: Path) -> None:
    _run(f"--print-to-pdf={out}", "--no-pdf-header-footer", html.resolve().as_uri())


if __name__ == "__main__":
    screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
