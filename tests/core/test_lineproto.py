"""The one line-protocol renderer: every escaping rule, and that the collector's renderers are this one."""

from __future__ import annotations

import pytest

from kerbside.collector.decode import decode
from kerbside.collector.gaps import Gap, gap_line
from kerbside.collector.gapscan import Record
from kerbside.core import lineproto as lp
from knode import wire

NOW = 1767225600


@pytest.mark.parametrize(("raw", "escaped"), [
    ("00c0ffee", "00c0ffee"),
    ("Rue de la Loi 16", r"Rue\ de\ la\ Loi\ 16"),
    ("a,b", r"a\,b"),
    ("a=b", r"a\=b"),
    ("a, b=c", r"a\,\ b\=c"),
    ('a"b', 'a"b'),                      # quotes need no escape in names
    ("a\\b", "a\\b"),                    # a backslash InfluxDB would not read as an escape is literal
    ("a\\\\b", "a\\\\b"),
    ("a\\", "a⧵"),                       # ...one it would (at the end, before , = space ") cannot be stored
    ("a\\,b", "a⧵\\,b"),
    ("a\\ b", "a⧵\\ b"),
    ("a\\=b", "a⧵\\=b"),
    ('a\\"b', 'a⧵"b'),
    ("a\nb", "a␊b"),                     # control characters become their Control Pictures
    ("a\r\nb", "a␍␊b"),
    ("a\tb\x00\x1f\x7f", "a␉b␀␟␡"),
    ("a\\\n", "a\\␊"),                   # the picture is not special: the backslash before it stays
    ("Überseering 3 – Süd", r"Überseering\ 3\ –\ Süd"),
    ("東京 😀", "東京\\ 😀"),
    ("\u2028", "\u2028"),                # not a control character: InfluxDB and the spool split on \n only
])
def test_names_tag_keys_tag_values_field_keys(raw: str, escaped: str) -> None:
    assert lp.escape_name(raw) == escaped


@pytest.mark.parametrize(("raw", "escaped"), [
    ("air", "air"),
    ("air_unsynced", "air_unsynced"),
    ("a b,c", r"a\ b\,c"),
    ("a=b", "a=b"),                      # = needs no escape in a measurement
    ("a\nb", "a␊b"),
    ("m\\", "m⧵"),
])
def test_measurements(raw: str, escaped: str) -> None:
    assert lp.escape_measurement(raw) == escaped


@pytest.mark.parametrize(("raw", "quoted"), [
    ("1.2.3", '"1.2.3"'),
    ("", '""'),
    ('say "hi"', r'"say \"hi\""'),
    ("C:\\fw", r'"C:\\fw"'),
    ("ends\\", r'"ends\\"'),
    ("a b,c=d", '"a b,c=d"'),            # nothing but " and \ is special inside a string
    ("sha256\nmismatch", '"sha256␊mismatch"'),
    ("a\r\n", '"a␍␊"'),
    ("tab\there", '"tab␉here"'),
    ("\\\n\"", r'"\\␊\""'),
    ("µg/m³ – ✓", '"µg/m³ – ✓"'),
])
def test_string_field_values(raw: str, quoted: str) -> None:
    assert lp.quote_string(raw) == quoted


def test_control_pictures_cover_exactly_c0_and_del() -> None:
    controls = "".join(chr(c) for c in [*range(0x20), 0x7F])
    assert lp.control_pictures(controls) == "".join(chr(0x2400 + c) for c in range(0x20)) + "\u2421"
    printable = "".join(chr(c) for c in range(0x20, 0x7F)) + "\x80\x85\xa0é\u2028"
    assert lp.control_pictures(printable) == printable
    assert "\n" not in lp.line("m", {"t": "\n"}, {"s": "\n", "\n": 1}, 1)


def test_field_values_by_type() -> None:
    assert [lp.field_value(v) for v in (True, False, 0, -7, 2**63 - 1, 1.5, 0.1, "x")] == [
        "true", "false", "0i", "-7i", "9223372036854775807i", "1.5", "0.1", '"x"']
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cannot store"):
            lp.field_value(bad)
    with pytest.raises(TypeError):
        lp.field_value(b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "scale", "text"), [(123, 10, "12.3"), (-5, 10, "-0.5"), (-500, 10, "-50.0"),
                                                  (0, 10, "0.0"), (438, 1, "438.0"), (7, 100, "0.07")])
def test_scaled_ints_render_exactly(n: int, scale: int, text: str) -> None:
    assert lp.scaled(n, scale) == text


def test_lines_sort_tags_and_fields_and_omit_empty_tags_and_none_fields() -> None:
    line = lp.line("status", {"zone": "", "site": "a b", "device": "00c0ffee", "kit": None},
                   {"online": True, "fw": "1.0", "heap": 5, "rssi": None}, 10)
    assert line == r'status,device=00c0ffee,site=a\ b fw="1.0",heap=5i,online=true 10'
    assert lp.series("m", {}) == "m"
    assert lp.series("m", {"a": ""}) == "m"
    with pytest.raises(ValueError, match="at least one field"):
        lp.line("m", {}, {"x": None}, 1)


def test_the_decoder_renders_status_and_ack_strings_with_the_renderer() -> None:
    dev = bytes.fromhex("00c0ffee")
    status = wire.encode_status({"v": 1, "id": dev, "online": True, "fw": 'v1\n"rc"\\2', "t": NOW, "synced": True})
    [line] = decode("kerbside/v1/00c0ffee/status", status, NOW, {"site": "a,b"}).lines
    assert line == f'status,device=00c0ffee,site=a\\,b fw="v1␊\\"rc\\"\\\\2",online=true {NOW * 10**9}'
    ack = wire.encode_status({"v": 1, "id": dev, "cmd": 3, "ok": False, "err": "line 1\r\nline 2"})
    [line] = decode("kerbside/v1/00c0ffee/ack", ack, NOW).lines
    assert line == f'ack,device=00c0ffee cmd=3i,err="line 1␍␊line 2",ok=false {NOW * 10**9}'


def test_live_tracker_and_gaps_scan_render_a_gap_alike() -> None:
    tags = {"site": "Rue de la Loi 16", "zone": "", "kit": "air"}
    live = gap_line("00c0ffee", tags, Gap(5, 7, 10**18, 60, [[5, 6]]))
    scanned = Record("00c0ffee", (("device", "00c0ffee"), ("kit", "air"), ("site", "Rue de la Loi 16")),
                     10**18, 5, 7, 2, 60).line()
    assert live == scanned == (r"kerbside_gaps,device=00c0ffee,kit=air,site=Rue\ de\ la\ Loi\ 16 "
                               f"first_seq=5i,last_seq=7i,missing=2i,period=60i {10**18}")
