"""Sensor drivers against byte-exact frames: good, bad checksum, truncated, noise between frames."""

from __future__ import annotations

import asyncio

import pytest

from knode import aggregate
from knode.crc import crc8
from knode.drivers import detector, no2, pms, sds011, sensirion

# PMS5003: PM1 5, PM2.5 12, PM10 20 ug/m3 (CF=1 and atmospheric), checksum 0x00F5.
PMS_GOOD = bytes.fromhex("424d001c0005000c00140005000c0014000000000000000000000000000000f5")
# SDS011: PM2.5 12.3, PM10 45.6 ug/m3, id 0x1234, checksum 0x8A.
SDS_GOOD = bytes.fromhex("aac07b00c80112348aab")


class TestPMS:
    def test_good_frame_gives_atmospheric_values_in_tenths(self) -> None:
        p = pms.Parser()
        assert p.feed(PMS_GOOD) == (50, 120, 200)
        assert (p.frames, p.bad_checksum, p.resync) == (1, 0, 0)

    def test_bad_checksum_is_counted_and_not_used(self) -> None:
        p = pms.Parser()
        bad = PMS_GOOD[:-1] + b"\xf6"
        assert p.feed(bad) is None
        assert p.bad_checksum == 1 and p.frames == 0

    def test_truncated_frame_waits_for_the_rest(self) -> None:
        p = pms.Parser()
        assert p.feed(PMS_GOOD[:17]) is None
        assert p.feed(PMS_GOOD[17:]) == (50, 120, 200)
        assert p.bad_checksum == 0

    def test_noise_between_frames_is_skipped_and_counted(self) -> None:
        p = pms.Parser()
        noise = b"\x00\x42\x13\x4d\xff"
        assert p.feed(noise + PMS_GOOD + noise + pms.frame(7, 9, 11)) == (70, 90, 110)
        assert p.frames == 2 and p.resync == 10

    def test_wrong_length_field_resynchronises(self) -> None:
        p = pms.Parser()
        assert p.feed(b"\x42\x4d\x00\x14" + PMS_GOOD) == (50, 120, 200)
        assert p.frames == 1

    def test_buffer_stays_bounded_on_endless_noise(self) -> None:
        p = pms.Parser()
        for _ in range(100):
            p.feed(bytes(range(0x50, 0x90)))
        assert len(p.buf) <= 1 and p.frames == 0

    def test_frame_helper_matches_the_datasheet_layout(self) -> None:
        assert pms.frame(5, 12, 20) == PMS_GOOD


class TestSDS011:
    def test_good_frame(self) -> None:
        p = sds011.Parser()
        assert p.feed(SDS_GOOD) == (None, 123, 456)

    def test_bad_checksum(self) -> None:
        p = sds011.Parser()
        assert p.feed(SDS_GOOD[:8] + b"\x8b\xab") is None
        assert p.bad_checksum == 1

    def test_truncated_then_completed(self) -> None:
        p = sds011.Parser()
        assert p.feed(SDS_GOOD[:4]) is None
        assert p.feed(SDS_GOOD[4:]) == (None, 123, 456)

    def test_noise_and_missing_tail_byte(self) -> None:
        p = sds011.Parser()
        assert p.feed(b"\x01\xaa\x02" + SDS_GOOD[:9] + b"\x00" + b"\xaa" + SDS_GOOD) == (None, 123, 456)
        assert p.frames == 1 and p.resync > 0


class TestSensirion:
    def test_crc8_matches_the_datasheet_example(self) -> None:
        assert crc8(b"\xbe\xef") == 0x92  # Sensirion SCD4x/SHT3x datasheets

    def test_words_checks_every_crc(self) -> None:
        data = bytes.fromhex("03202a6667a25eb93c")
        assert sensirion.words(data, 3) == [800, 0x6667, 0x5EB9]
        with pytest.raises(sensirion.CRCError):
            sensirion.words(data[:-1] + b"\x3d", 3)
        with pytest.raises(sensirion.CRCError):
            sensirion.words(data[:7], 3)

    def test_conversion_formulas(self) -> None:
        assert sensirion.temp_d(0x6667) == 250  # 25.0 C
        assert sensirion.rh_d(0x5EB9) == 370  # 37.0 %
        assert sensirion.temp_d(0) == -450 and sensirion.rh_d(65535) == 1000

    class FakeBus:
        def __init__(self, answer: bytes, fail: bool = False) -> None:
            self.answer, self.fail, self.written = answer, fail, []

        def writeto(self, addr: int, data: bytes) -> None:
            if self.fail:
                raise OSError(19)
            self.written.append((addr, bytes(data)))

        def readfrom_into(self, addr: int, buf: bytearray) -> None:
            buf[:] = self.answer[: len(buf)]

    def test_scd4x_reads_and_counts_errors(self) -> None:
        bus = self.FakeBus(bytes.fromhex("03202a6667a25eb93c"))  # also answers data-ready: 0x0320 & 0x7ff != 0
        waits: list[int] = []
        s = sensirion.SCD4x(bus, _sleeper(waits))
        assert asyncio.run(s.read()) == (800, 250, 370)
        assert bus.written == [(0x62, b"\x21\xb1"), (0x62, b"\xe4\xb8"), (0x62, b"\xec\x05")]
        assert waits == [1, 1], "the datasheet's 1 ms after each command"
        bus.answer = bytes.fromhex("03202b6667a25eb93c")
        assert asyncio.run(s.read()) is None and s.errors == 1
        assert asyncio.run(sensirion.SCD4x(self.FakeBus(b"", fail=True), _sleeper([])).read()) is None

    def test_sht3x_single_shot_waits_for_the_conversion(self) -> None:
        bus = self.FakeBus(bytes.fromhex("6667a25eb93c"))
        waits: list[int] = []
        s = sensirion.SHT3x(bus, _sleeper(waits))
        assert asyncio.run(s.read()) == (250, 370)
        assert bus.written == [(0x44, b"\x24\x00")]
        assert waits == [16], "15.5 ms conversion (high repeatability) before the read"


def _sleeper(log: list[int]):  # type: ignore[no-untyped-def]
    async def sleep_ms(ms: int) -> None:
        log.append(ms)

    return sleep_ms


class TestNO2:
    def test_zero_gas_is_zero(self) -> None:
        cal = {"we0": 300.0, "ae0": 280.0, "sens": 0.25, "n_t": [1.0] * 9}
        assert no2.no2_d(300.0, 280.0, 20.0, cal) == 0

    def test_temperature_correction_uses_the_aux_electrode(self) -> None:
        cal = {"we0": 300.0, "ae0": 280.0, "sens": 0.25, "n_t": [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]}
        # 10 ppb of NO2 = 2.5 mV on WE; AE drifted +1 mV, scaled by n(T)
        assert no2.no2_d(302.5 + 1.0, 281.0, 0.0, cal) == 188  # n=1 at 0 C: 10 ppb = 18.8 ug/m3
        assert no2.no2_d(302.5 + 2.0, 281.0, 25.0, cal) == 188  # n=2 at 25 C

    def test_interpolated_correction_factor(self) -> None:
        assert no2.n_of_t([0, 10, 20], -30) == 0 and no2.n_of_t([0, 10, 20], -25) == 5
        assert no2.n_of_t([0, 10, 20], 99) == 20

    def test_out_of_range_is_an_error_not_a_value(self) -> None:
        class ADC:
            def __init__(self, uv: int) -> None:
                self.uv = uv

            def read_uv(self) -> int:
                return self.uv

        s = no2.NO2(no2.Esp32Input(ADC(3_000_000)), no2.Esp32Input(ADC(280_000)), {"we0": 300.0, "ae0": 280.0, "sens": 0.25})
        assert asyncio.run(s.read(200)) is None and s.errors == 1


class TestDetector:
    LINE = b"$KV,I,452,43*4C\r\n"

    def test_vehicle_line(self) -> None:
        got: list[tuple[int, int, int]] = []
        p = detector.Parser()
        assert p.feed(self.LINE + b"$KV,O,301,120*" + b"%02X" % detector.checksum(b"KV,O,301,120") + b"\r\n",
                      lambda *a: got.append(a)) == 0
        assert got == [(0, 43, 452), (1, 120, 301)]
        assert detector.line("V", ["I", 452, 43]) == self.LINE

    def test_bad_checksum_truncated_and_noise(self) -> None:
        got: list[tuple[int, int, int]] = []
        p = detector.Parser()
        data = b"\x00\xff garbage\n" + self.LINE.replace(b"4C", b"4D") + self.LINE[:9]
        assert p.feed(data, lambda *a: got.append(a)) == 0
        assert got == [] and p.bad_checksum == 1 and p.bad_line == 1
        p.feed(self.LINE[9:] + detector.line("P", [1]), lambda *a: got.append(a))
        assert got == [(0, 43, 452)] and p.polls == 1

    def test_implausible_values_are_rejected(self) -> None:
        p = detector.Parser()
        got: list[tuple[int, int, int]] = []
        p.feed(detector.line("V", ["I", 452, 0]) + detector.line("V", ["X", 452, 40]), lambda *a: got.append(a))
        assert got == [] and p.bad_line == 2

    def test_overlong_line_is_dropped(self) -> None:
        p = detector.Parser()
        p.feed(b"A" * 100, lambda *a: None)
        assert p.buf == bytearray() and p.bad_line == 1


class TestAggregation:
    def test_means_round_half_away_from_zero_and_count_samples(self) -> None:
        m = aggregate.Mean(3)
        m.add([10, None, -5])
        m.add([11, None, -6])
        m.add([None, None, None])
        assert m.take() == (2, [11, None, -6])
        assert m.take() == (0, [None, None, None])

    def test_length_classes(self) -> None:
        assert [aggregate.length_class(x) for x in (10, 24, 25, 54, 55, 74, 75, 180)] == [0, 0, 1, 1, 2, 2, 3, 3]

    def test_traffic_counts_speeds_and_dead_detector(self) -> None:
        t = aggregate.Traffic()
        t.sampled()
        t.vehicle(0, 43, 500)
        t.vehicle(0, 44, 400)
        t.vehicle(1, 120, 300)
        assert t.take() == (1, [0, 2, 0, 0, 0, 0, 0, 1, 450, 300])
        t.vehicle(0, 43, 500)  # lines without a single poll answer: the detector is not trusted
        assert t.take() == (0, [None] * 10)
