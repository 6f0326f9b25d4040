"""Store-and-forward on flash (real files): crash safety, drops, sequence persistence, re-stamping."""

from __future__ import annotations

from pathlib import Path

from knode import batch, ringbuf
from knode.ringbuf import BOOT, SEQ, SYNCED, T

VALUES = [120, 180, 250, 215, 640, 10130]
BIG = 64 * 4096
SEG = 512  # small segments: a few records each, so tests cross many segment boundaries
SMALL = (2 + ringbuf.META_BLOCKS) * SEG  # room for exactly two segments


def _fill(store: ringbuf.Store, n: int, t0: int = 1767225600, synced: bool = True) -> None:
    for i in range(n):
        store.append(t0 + 60 * i, synced, 60, 6, 6, VALUES)


def test_sequence_and_boot_survive_a_restart(tmp_path: Path) -> None:
    s = ringbuf.Store(str(tmp_path), budget_bytes=BIG)
    assert (s.boot, s.next_seq, len(s)) == (1, 0, 0)
    _fill(s, 100)
    s.ack(69)
    s = ringbuf.Store(str(tmp_path), budget_bytes=BIG)
    assert (s.boot, s.next_seq, s.head, len(s)) == (2, 100, 70, 30)
    assert [r[SEQ] for r in s.peek(5)] == [70, 71, 72, 73, 74]


def test_sequence_continues_when_everything_was_acknowledged(tmp_path: Path) -> None:
    s = ringbuf.Store(str(tmp_path), budget_bytes=BIG, seg_bytes=SEG)
    _fill(s, 130)
    assert len(s.segs) > 5
    s.ack(129)
    assert len(s) == 0 and len(s.segs) == 1  # the newest segment stays: it remembers the sequence
    s = ringbuf.Store(str(tmp_path), budget_bytes=BIG, seg_bytes=SEG)
    assert s.append(1767300000, True, 60, 6, 6, VALUES) == 130


def test_torn_last_record_is_cut_and_nothing_else_lost(tmp_path: Path) -> None:
    s = ringbuf.Store(str(tmp_path), budget_bytes=BIG)
    _fill(s, 10)
    seg = tmp_path / "00000000"
    data = seg.read_bytes()
    seg.write_bytes(data[:-5])  # power cut in the middle of writing record 9
    s = ringbuf.Store(str(tmp_path), budget_bytes=BIG)
    assert s.next_seq == 9 and [r[SEQ] for r in s.peek(20)] == list(range(9))
    assert s.append(1767300000, True, 60, 6, 6, VALUES) == 9  # in a new segment: the torn one is never rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000000", "00000009", "head"]
    assert [r[SEQ] for r in ringbuf.Store(str(tmp_path), budget_bytes=BIG).peek(20)] == list(range(10))


def test_corrupt_byte_stops_at_the_last_good_record(tmp_path: Path) -> None:
    s = ringbuf.Store(str(tmp_path), budget_bytes=BIG)
    _fill(s, 5)
    seg = tmp_path / "00000000"
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0xFF  # flash bit rot inside the newest record: its CRC fails
    seg.write_bytes(bytes(data))
    s = ringbuf.Store(str(tmp_path), budget_bytes=BIG)
    assert [r[SEQ] for r in s.peek(20)] == [0, 1, 2, 3]


def test_lost_head_file_is_rebuilt_from_the_segments(tmp_path: Path) -> None:
    s = ringbuf.Store(str(tmp_path), budget_bytes=BIG)
    _fill(s, 70)
    (tmp_path / "head").unlink()
    s = ringbuf.Store(str(tmp_path), budget_bytes=BIG)
    assert s.next_seq == 70 and s.head == 0  # resend rather than lose: the collector de-duplicates


def test_full_buffer_drops_oldest_segment_and_counts_it(tmp_path: Path) -> None:
    s = ringbuf.Store(str(tmp_path), budget_bytes=SMALL, seg_bytes=SEG)  # two segments
    _fill(s, 200)
    kept = s.segs[0]
    assert s.drops == kept and s.head == kept and len(s) == 200 - kept and 0 < len(s) <= 2 * SEG // 20
    assert s.peek(1)[0][SEQ] == kept
    s = ringbuf.Store(str(tmp_path), budget_bytes=SMALL, seg_bytes=SEG)
    assert s.drops == kept  # survives reboot, reported in status "drop"
    assert len(list(tmp_path.iterdir())) == 3  # two segments and head: bounded on flash


def test_readings_before_ntp_are_restamped_after_sync_even_across_reboot(tmp_path: Path) -> None:
    s = ringbuf.Store(str(tmp_path), budget_bytes=BIG)
    _fill(s, 3, t0=946684800, synced=False)  # node clock from 2000-01-01
    s.set_offset(1767225600 - 946684800)
    s = ringbuf.Store(str(tmp_path), budget_bytes=BIG)  # reboot before sending
    _fill(s, 2, t0=946684800, synced=False)  # the new boot never synced
    recs = s.peek(10)
    assert [(r[BOOT], r[T], r[SYNCED]) for r in recs] == [
        (1, 1767225600, 1), (1, 1767225660, 1), (1, 1767225720, 1), (2, 946684800, 0), (2, 946684860, 0)]
    assert batch.first_run(recs) == 3  # a message never mixes boots or clock states


def test_first_run_splits_on_gaps_and_period_changes(tmp_path: Path) -> None:
    s = ringbuf.Store(str(tmp_path), budget_bytes=BIG)
    for t, period in ((0, 60), (60, 60), (180, 60), (240, 300), (540, 300)):
        s.append(1767225600 + t, True, period, 6, 6, VALUES)
    recs = s.peek(10)
    assert batch.first_run(recs) == 2  # 120 s missing
    assert batch.first_run(recs[2:]) == 1  # period changes
    assert batch.first_run(recs[3:]) == 2
    assert batch.first_run(recs, 1) == 1
