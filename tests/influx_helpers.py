"""The tests' InfluxDB client (kerbside's own, plus a point-set view) and an independent line-protocol parser.

The parser is deliberately not kerbside.core.lineproto's inverse: a test that
compares what the collector rendered with what InfluxDB stored parses the
expected lines through a second, independent path.
"""

from __future__ import annotations

import re
from typing import Any

from kerbside.core.influx import InfluxClient


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def _split(s: str, sep: str) -> list[str]:
    out, cur, i, quoted = [], [], 0, False
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s):
            cur.append(s[i:i + 2])
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def _value(v: str) -> Any:
    if v.endswith("i") and re.fullmatch(r"-?\d+i", v):
        return int(v[:-1])
    if v in ("true", "false"):
        return v == "true"
    if v.startswith('"'):
        return v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return float(v)


def parse_line(line: str) -> tuple[str, tuple[tuple[str, str], ...], dict[str, Any], int]:
    """(measurement, sorted tags, fields, timestamp ns) of one line."""
    head, fields, ts = _split(line, " ")
    parts = _split(head, ",")
    tags = tuple(sorted(tuple(_unescape(x) for x in _split(p, "=")) for p in parts[1:]))  # type: ignore[misc]
    fdict = {}
    for f in _split(fields, ","):
        k, v = _split(f, "=")
        fdict[_unescape(k)] = _value(v)
    return _unescape(parts[0]), tags, fdict, int(ts)


class InfluxHTTP(InfluxClient):
    """kerbside.core.influx.InfluxClient with the tests' view of a measurement as a set of points."""

    def points(self, measurement: str, where: str = "") -> set[tuple[str, tuple[tuple[str, str], ...], tuple, int]]:
        """Every point of a measurement as (measurement, tags, sorted fields, ns), comparable to parse_line."""
        tag_keys = {row[0] for s in self.query(f'SHOW TAG KEYS FROM "{measurement}"') for row in s["values"]}
        out = set()
        for s in self.query(f'SELECT * FROM "{measurement}" {where}'):
            cols = s["columns"]
            for row in s["values"]:
                rec = dict(zip(cols, row, strict=True))
                ts = rec.pop("time")
                tags = tuple(sorted((k, v) for k, v in rec.items() if k in tag_keys and v not in (None, "")))
                fields = tuple(sorted((k, float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
                                      for k, v in rec.items() if k not in tag_keys and v is not None))
                out.add((measurement, tags, fields, ts))
        return out


def as_point(line: str) -> tuple[str, tuple[tuple[str, str], ...], tuple, int]:
    """Normalise a line like InfluxHTTP.points (ints compare as floats: JSON loses the type)."""
    m, tags, fields, ts = parse_line(line)
    norm = tuple(sorted((k, float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
                        for k, v in fields.items()))
    return m, tags, norm, ts
