"""InfluxDB line protocol: the one renderer of every point kerbside writes.

Why one module: the collector's readings, status and ack points, the gap
records of the live tracker and of `kerbside gaps scan` must escape alike, or
the same tag value becomes two series. The rules are InfluxDB's:

* measurement: `,` and space are backslash-escaped;
* tag keys, tag values and field keys: `,`, `=` and space are backslash-escaped;
* string field values: double-quoted, with `"` and `\\` backslash-escaped;
* a backslash is literal (InfluxDB 1.x never unescapes one in a name), except
  where InfluxDB would read it as an escape: at the end of a name or right
  before `,`, `=`, space or `"`. No escape can store a backslash there, so it is
  replaced by ⧵ (U+29F5 REVERSE SOLIDUS OPERATOR), which looks the same and
  keeps the line valid instead of silently merging two tags;
* empty (or None) tag values are omitted: InfluxDB has no empty tag, and omitting
  them everywhere keeps one series per device whoever renders the point;
* tags and fields are sorted by key (InfluxDB's own order, the fastest to index).

Control characters (U+0000–U+001F and U+007F) cannot be written at all:
InfluxDB has no escape for a newline, and a line holding one becomes two lines
once the spool (which joins a batch's lines with "\\n") is replayed. Every
control character in any element is therefore replaced by its Unicode
Control Picture, U+2400 + code (U+2421 for DEL): a status `fw` of "1.2\\n3" is
stored as "1.2␊3", carriage return as "␍", tab as "␉". The picture shows an
operator exactly which character the node sent, keeps the string's length (so
the wire contract's limits still hold for what is stored), and cannot be
mistaken for text a node means to send. docs/wire/README.md states the same
rule.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping

FieldValue = bool | int | float | str
"""bool → true/false, int → integer (`i`), float → float, str → string; see field_set."""

_CONTROL_PICTURES = {**{c: 0x2400 + c for c in range(0x20)}, 0x7F: 0x2421}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BACKSLASH_READ_AS_ESCAPE = re.compile(r'\\(?=[,= "]|\Z)')
_NAME_SPECIAL = re.compile(r"[\x00-\x1f\x7f,= \\]")
_MEASUREMENT_SPECIAL = re.compile(r"[\x00-\x1f\x7f, \\]")
_STRING_SPECIAL = re.compile(r'[\x00-\x1f\x7f"\\]')


def control_pictures(text: str) -> str:
    """Replace every control character by its Unicode Control Picture (newline → ␊)."""
    return text.translate(_CONTROL_PICTURES) if _CONTROL.search(text) else text


def _without_escaping_backslashes(name: str) -> str:
    name = control_pictures(name)
    return _BACKSLASH_READ_AS_ESCAPE.sub("\u29f5", name) if "\\" in name else name


def escape_measurement(name: str) -> str:
    if not _MEASUREMENT_SPECIAL.search(name):
        return name
    return _without_escaping_backslashes(name).replace(",", "\\,").replace(" ", "\\ ")


def escape_name(name: str) -> str:
    """A tag key, tag value or field key."""
    if name.isalnum() or not _NAME_SPECIAL.search(name):
        return name  # the usual case (ids, keys, kit and zone names): checking is all the hot path pays
    return _escaped_name(name)


@functools.lru_cache(maxsize=4096)
def _escaped_name(name: str) -> str:
    """Names that need escaping are few and recur (a site's name on each of its readings): remembered."""
    return _without_escaping_backslashes(name).replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def quote_string(value: str) -> str:
    """A string field value, quotes included."""
    if not _STRING_SPECIAL.search(value):
        return f'"{value}"'
    value = control_pictures(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


def scaled(n: int, scale: int) -> str:
    """The exact decimal of a scaled int (n / scale, scale a power of ten) as a line-protocol float.

    Exact on purpose: 123 / 10 is 12.3 here, never 12.299999999999999, so a
    replayed reading renders byte for byte as the first time.
    """
    if scale == 1:
        return f"{n}.0"
    sign = "-" if n < 0 else ""
    q, r = divmod(abs(n), scale)
    return f"{sign}{q}.{r:0{len(str(scale)) - 1}d}"


def ratio(num: int, den: int) -> str:
    """num / den rounded to 4 decimals, as a line-protocol float (data capture)."""
    return repr(round(num / den, 4))


def field_value(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"InfluxDB cannot store the float {value!r}")
        return repr(value)
    if isinstance(value, str):
        return quote_string(value)
    raise TypeError(f"no line-protocol field type for {type(value).__name__}")


def escape_tags(tags: Mapping[str, str | None]) -> dict[str, str]:
    """Escaped tag key -> escaped value, empty values dropped: a tag set to render (series_of) or extend."""
    # isalnum() first: escape_name's own fast test, minus a call per key and value on the decoder's hot path
    return {k if k.isalnum() else escape_name(k): v if v.isalnum() else escape_name(v) for k, v in tags.items() if v}


def series_of(measurement: str, escaped: Mapping[str, str]) -> str:
    """The series key from an escaped measurement and escape_tags' output, tags sorted by key.

    The decoder's hot path escapes a message's tags once and renders several series from them.
    """
    if not escaped:
        return measurement
    return measurement + "," + ",".join(map("=".join, sorted(escaped.items())))


def series(measurement: str, tags: Mapping[str, str | None]) -> str:
    """`measurement,k=v,…`: the series key, tags sorted, empty tag values omitted."""
    return series_of(escape_measurement(measurement), escape_tags(tags))


def field_set(fields: Mapping[str, FieldValue | None]) -> str:
    """`k=v,…` sorted by key; None values are omitted (a channel without a sample)."""
    out = ",".join(f"{escape_name(k)}={field_value(v)}" for k, v in sorted(fields.items()) if v is not None)
    if not out:
        raise ValueError("a point needs at least one field")
    return out


def line(measurement: str, tags: Mapping[str, str | None], fields: Mapping[str, FieldValue | None], ts_ns: int) -> str:
    """One point. ts_ns is the timestamp in nanoseconds (every kerbside write uses precision=ns)."""
    return f"{series(measurement, tags)} {field_set(fields)} {ts_ns}"
