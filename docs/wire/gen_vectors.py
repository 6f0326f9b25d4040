"""Regenerate docs/wire/vectors.json.

Payloads are built here with cbor2 and a delta coder written independently of
both the firmware encoder and the collector decoder, so the vectors check each
side against a third. Expected lines come from the collector decoder and were
reviewed by hand when a vector was added: review the diff of vectors.json
whenever you run this (`python docs/wire/gen_vectors.py && git diff docs/wire`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cbor2

from kerbside.collector.decode import Rejected, decode

NOW = 1767225600  # 2026-01-01T00:00:00Z: every vector is judged at this collector time
T0 = NOW - 3600
AIR = "00c0ffee"
TRF = "0b5e55ed"
MAX_AGE = 400 * 86400


def topic(dev: str, kind: str = "readings") -> str:
    return f"kerbside/v1/{dev}/{kind}"


def readings_obj(inp: dict[str, Any]) -> list[Any]:
    """Reference encoder: header then readings, values delta-coded per channel."""
    flags = (1 if inp["synced"] else 0) | (inp["kit"] << 1)
    out: list[Any] = [1, bytes.fromhex(inp["device"]), inp["seq"], inp["boot"], flags,
                      inp["t0"], inp["period"], inp["expected"]]
    last: dict[int, int] = {}
    for samples, values in inp["readings"]:
        vals = list(values)
        while vals and vals[-1] is None:
            vals.pop()
        row: list[Any] = [samples]
        for i, v in enumerate(vals):
            if v is None:
                row.append(None)
            else:
                row.append(v - last[i] if i in last else v)
                last[i] = v
        out.append(row)
    return out


def air_in(readings: list[Any], **kw: Any) -> dict[str, Any]:
    base = {"device": AIR, "seq": 1000, "boot": 3, "synced": True, "kit": 1,
            "t0": T0, "period": 60, "expected": 6, "readings": readings}
    base.update(kw)
    return base


def traffic_in(readings: list[Any], **kw: Any) -> dict[str, Any]:
    base = {"device": TRF, "seq": 52000, "boot": 1, "synced": True, "kit": 2,
            "t0": T0, "period": 60, "expected": 60, "readings": readings}
    base.update(kw)
    return base


SIX = [61, 98, 152, 123, 710, 10082]  # pm1 6.1, pm2.5 9.8, pm10 15.2 µg/m³, 12.3 °C, 71.0 %, 1008.2 hPa
EIGHT = SIX + [412, 438]  # NO2 41.2 µg/m³, CO2 438 ppm


def air_batch(n: int) -> list[Any]:
    rows = []
    for k in range(n):
        w = math.sin(k / 9.0)
        rows.append([6 if k % 17 else 5, [61 + round(4 * w), 98 + round(6 * w), 152 + round(9 * w) + k % 3,
                                          123 + k // 10, 710 - k // 6, 10082 - k // 20]])
    return rows


def traffic_batch(n: int) -> list[Any]:
    rows = []
    for k in range(n):
        cars_in, cars_out = 8 + k % 7, 11 - k % 5
        rows.append([60 if k != 4 else 41, [k % 2, cars_in, k % 3, (k % 5 == 0) * 2,
                                            (k + 1) % 2, cars_out, 1, int(k % 4 == 0),
                                            412 + 3 * (k % 9), 388 - 2 * (k % 11)]])
    return rows


def valid() -> list[tuple[str, str, Any, dict[str, Any]]]:
    """(name, topic, input, kind) for vectors that must decode."""
    v: list[tuple[str, str, Any, dict[str, Any]]] = []

    def r(name: str, inp: dict[str, Any]) -> None:
        v.append((name, topic(inp["device"]), "readings", inp))

    r("air_single_6ch", air_in([[6, SIX]]))
    r("air_single_8ch", air_in([[6, EIGHT]]))
    r("air_batch_60", air_in(air_batch(60)))
    r("air_batch_broken_pm_sensor", air_in([[6, EIGHT], [6, [None, None, None] + EIGHT[3:]],
                                            [3, [70, 101, 160] + EIGHT[3:]]]))
    r("air_missing_middle_channel", air_in([[6, SIX[:5] + [None, 388]], [6, SIX[:5] + [None, 371]]]))
    r("air_zero_capture", air_in([[0, []]]))
    r("air_partial_capture", air_in([[4, SIX]]))
    r("air_unsynced_clock", air_in([[6, SIX], [6, SIX]], synced=False, t0=946684800 + 125, boot=7))
    r("air_negative_temp_and_no2", air_in([[6, [12, 25, 31, -87, 935, 10260, -34, 455]]]))
    r("air_channel_maxima", air_in([[6, [20000, 20000, 20000, 850, 1000, 11000, 20000, 40000]]]))
    r("air_channel_minima", air_in([[6, [0, 0, 0, -500, 0, 3000, -1000, 0]]]))
    r("air_seq_max", air_in([[6, SIX]], seq=0xFFFFFFFF, boot=0xFFFFFFFF))
    r("air_time_future_edge", air_in([[6, SIX]], t0=NOW + 300))
    r("air_time_past_edge", air_in([[6, SIX]], t0=NOW - MAX_AGE))
    r("air_hourly_period", air_in([[3600, SIX]], period=3600, expected=3600))
    r("air_batch_240_max", air_in(air_batch(240), t0=NOW - 240 * 60))
    r("traffic_single", traffic_in([[60, [1, 14, 2, 1, 0, 12, 1, 2, 431, 395]]]))
    r("traffic_batch_15", traffic_in(traffic_batch(15)))
    r("traffic_no_vehicles", traffic_in([[60, [0, 0, 0, 0, 0, 0, 0, 0]]]))
    r("traffic_detector_down", traffic_in([[0, []], [22, [0, 3, 0, 0, 1, 2, 0, 0, 356, 402]]]))
    r("traffic_unsynced_clock", traffic_in([[60, [0, 4, 0, 0, 0, 5, 1, 0, 410, 420]]],
                                           synced=False, t0=946684800 + 3600))

    def s(name: str, dev: str, kind: str, m: dict[str, Any]) -> None:
        v.append((name, topic(dev, kind), kind, m))

    s("status_full", AIR, "status", {
        "v": 1, "id": AIR, "online": True, "t": NOW - 5, "synced": True, "fw": "0.1.0", "kit": 1,
        "up": 86400, "heap": 61440, "rssi": -67, "buf": 12, "drop": 0, "boot": 3, "seq": 1060, "cfg": 2,
        "health": {"laser_h": 1234, "pm_err": 0, "co2_err": 2}})
    s("status_last_will", AIR, "status", {"v": 1, "id": AIR, "online": False})
    s("status_unsynced_uses_collector_time", TRF, "status", {
        "v": 1, "id": TRF, "online": True, "t": 946684800 + 30, "synced": False, "fw": "0.1.0", "kit": 2,
        "up": 30, "heap": 70000, "rssi": -80, "buf": 300, "drop": 0, "boot": 2, "seq": 52000})
    s("ack_ok", AIR, "ack", {"v": 1, "id": AIR, "cmd": 17, "ok": True, "cfg": 3})
    s("ack_error", TRF, "ack", {"v": 1, "id": TRF, "cmd": 18, "ok": False, "err": "sha256 mismatch"})
    return v


def enc(obj: Any) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def status_obj(m: dict[str, Any]) -> dict[str, Any]:
    return {**m, "id": bytes.fromhex(m["id"])}


def invalid() -> list[tuple[str, str, bytes, str]]:
    one = readings_obj(air_in([[6, SIX]]))
    good = enc(one)

    def alt(i: int, value: Any, base: list[Any] | None = None) -> bytes:
        o = list(base or one)
        o[i] = value
        return enc(o)

    def reading(*values: Any, samples: int = 6) -> bytes:
        return enc(one[:8] + [[samples, *values]])

    aid = bytes.fromhex(AIR)
    trf = readings_obj(traffic_in([[60, [1, 14, 2, 1, 0, 12, 1, 2, 431, 395]]]))
    big = readings_obj(air_in(air_batch(241), t0=NOW - 241 * 60))
    return [
        ("truncated_cbor", topic(AIR), good[:-3], "cbor_malformed"),
        ("empty_payload", topic(AIR), b"", "cbor_malformed"),
        ("trailing_bytes", topic(AIR), good + b"\x00", "cbor_malformed"),
        ("reserved_cbor_byte", topic(AIR), bytes([0x89, 0x01, 0xFC]), "cbor_malformed"),
        ("map_instead_of_array", topic(AIR), enc({"v": 1}), "bad_structure"),
        ("header_too_short", topic(AIR), enc(one[:7]), "bad_structure"),
        ("version_2", topic(AIR), alt(0, 2), "unsupported_version"),
        ("version_as_text", topic(AIR), alt(0, "1"), "bad_structure"),
        ("device_id_mismatch", topic(AIR), alt(1, bytes.fromhex(TRF)), "device_mismatch"),
        ("device_id_wrong_length", topic(AIR), alt(1, b"\x00\xc0\xff"), "bad_structure"),
        ("topic_uppercase_id", topic(AIR.upper()), good, "bad_topic"),
        ("topic_command_channel", topic(AIR, "cmd"), good, "bad_topic"),
        ("topic_wrong_version", f"kerbside/v2/{AIR}/readings", good, "bad_topic"),
        ("oversize_payload", topic(AIR), good + b"\x00" * (8193 - len(good)), "oversize"),
        ("value_nan", topic(AIR), reading(61, float("nan")), "value_not_integer"),
        ("value_float", topic(AIR), reading(61, 9.8), "value_not_integer"),
        ("value_bool", topic(AIR), reading(True), "value_not_integer"),
        ("value_text", topic(AIR), reading("61"), "value_not_integer"),
        ("samples_float", topic(AIR), enc(one[:8] + [[6.0, 61]]), "value_not_integer"),
        ("pressure_in_pascal", topic(AIR), reading(61, 98, 152, 123, 710, 100820), "value_out_of_range"),
        ("temperature_in_kelvin", topic(AIR), reading(61, 98, 152, 2954), "value_out_of_range"),
        ("humidity_over_100", topic(AIR), reading(61, 98, 152, 123, 1001), "value_out_of_range"),
        ("negative_pm", topic(AIR), reading(-1), "value_out_of_range"),
        ("negative_vehicle_count", topic(TRF), enc(trf[:8] + [[60, 1, -2]]), "negative_count"),
        ("delta_goes_negative", topic(TRF), enc(trf[:8] + [[60, 1, 5], [60, 0, -6]]), "negative_count"),
        ("too_many_values", topic(AIR), reading(*EIGHT, 1), "bad_structure"),
        ("reading_not_array", topic(AIR), enc(one[:8] + [6]), "bad_structure"),
        ("samples_exceed_expected", topic(AIR), reading(61, samples=7), "capture_invalid"),
        ("time_in_future", topic(AIR), alt(5, NOW + 301), "time_future"),
        ("batch_reaches_future", topic(AIR), enc(readings_obj(air_in(air_batch(10), t0=NOW - 239))), "time_future"),
        ("time_too_old", topic(AIR), alt(5, NOW - MAX_AGE - 1), "time_past"),
        ("unknown_kit", topic(AIR), alt(4, 1 | (3 << 1)), "unknown_kit"),
        ("reserved_flag_bit", topic(AIR), alt(4, 3 | 16), "bad_header"),
        ("period_zero", topic(AIR), alt(6, 0), "bad_header"),
        ("expected_zero", topic(AIR), alt(7, 0), "bad_header"),
        ("seq_negative", topic(AIR), alt(2, -1), "bad_header"),
        ("seq_overflow_in_batch", topic(AIR), enc(readings_obj(air_in([[6, SIX], [6, SIX]], seq=0xFFFFFFFF))), "bad_header"),
        ("no_readings", topic(AIR), enc(one[:8]), "batch_size"),
        ("too_many_readings", topic(AIR), enc(big), "batch_size"),
        ("status_not_a_map", topic(AIR, "status"), enc([1, 2]), "bad_structure"),
        ("status_without_online", topic(AIR, "status"), enc({"v": 1, "id": bytes.fromhex(AIR)}), "bad_structure"),
        ("status_rssi_positive", topic(AIR, "status"), enc({"v": 1, "id": aid, "online": True, "rssi": 12}),
         "value_out_of_range"),
        ("status_device_mismatch", topic(AIR, "status"), enc({"v": 1, "id": bytes.fromhex(TRF), "online": True}),
         "device_mismatch"),
        ("ack_without_ok", topic(AIR, "ack"), enc({"v": 1, "id": bytes.fromhex(AIR), "cmd": 1}), "bad_structure"),
    ]


def main() -> None:
    out: list[dict[str, Any]] = []
    for name, tp, kind, inp in valid():
        payload = enc(readings_obj(inp)) if kind == "readings" else enc(status_obj(inp))
        d = decode(tp, payload, NOW)
        out.append({"name": name, "topic": tp, "payload_hex": payload.hex(), "valid": True, "now": NOW,
                    "size": len(payload), "input": {kind: inp}, "lines": d.lines})
    for name, tp, payload, reason in invalid():
        try:
            decode(tp, payload, NOW)
        except Rejected as e:
            if e.reason != reason:
                raise SystemExit(f"{name}: expected {reason}, decoder says {e}") from None
        else:
            raise SystemExit(f"{name}: decoder accepted it")
        out.append({"name": name, "topic": tp, "payload_hex": payload.hex(), "valid": False, "now": NOW,
                    "reason": reason})
    path = Path(__file__).with_name("vectors.json")
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(out)} vectors ({sum(not x['valid'] for x in out)} invalid) -> {path}")


if __name__ == "__main__":
    main()
