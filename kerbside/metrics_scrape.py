"""Read a Prometheus text exposition, for the demo's live view and the benchmarks.

Only the subset the collector emits: `name{labels} value` lines, comments skipped.
"""

from __future__ import annotations

import urllib.error
import urllib.request


def parse(text: str) -> dict[str, float]:
    """Map 'name' or 'name{labels}' to its value; series of one name are also summed under 'name'."""
    out: dict[str, float] = {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        out[key] = v
        name = key.split("{", 1)[0]
        if name != key:
            sums[name] = sums.get(name, 0.0) + v
    for name, v in sums.items():
        out.setdefault(name, v)
    return out


def scrape(url: str, timeout: float = 2.0) -> dict[str, float] | None:
    """None when the endpoint is not up (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return parse(r.read().decode())
    except (OSError, urllib.error.URLError):
        return None
