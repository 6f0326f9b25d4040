"""SeqTracker (collector/gaps.py) without processes: out of order, duplicates, backfill, reboots, resets, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kerbside.collector.gaps as gaps
from kerbside.collector.gaps import MAX_JUMP, SeqTracker
from kerbside.core.errors import StorageError

T0 = 1_767_225_600
P = 60


def obs(t: SeqTracker, seq: int, count: int = 1, device: str = "d", period: int = P) -> list[str]:
    """Readings seq..seq+count-1 taken every `period` s from T0 (reading n at T0 + n*period)."""
    return t.observe(device, seq, count, T0 + seq * period, period, {})


def record(first: int, last: int, missing: int, device: str = "d") -> str:
    return (f"kerbside_gaps,device={device} first_seq={first}i,last_seq={last}i,missing={missing}i,period={P}i "
            f"{(T0 + first * P) * 10**9}")


def holes(t: SeqTracker, device: str = "d") -> list[list[list[int]]]:
    return [g.holes for g in t.devices[device].gaps]


def test_an_in_order_stream_has_no_gaps_or_duplicates() -> None:
    t = SeqTracker()
    for seq in range(0, 600, 60):
        assert obs(t, seq, 60) == []
    assert (t.devices["d"].hi, t.open_gaps(), t.missing(), t.duplicates, t.gaps_opened) == (599, 0, 0, 0, 0)


def test_a_backlog_arriving_out_of_order_shrinks_the_gap_to_zero() -> None:
    t = SeqTracker()
    obs(t, 0, 5)
    assert obs(t, 10, 3) == [record(5, 9, 5)]  # a jump: 5..9 missing, timestamped at reading 5
    assert obs(t, 7) == [record(5, 9, 4)]
    assert holes(t) == [[[5, 6], [8, 9]]]  # a fill in the middle splits the hole, not the record
    assert obs(t, 5, 2) == [record(5, 9, 2)]
    assert obs(t, 13, 2) == []  # new readings meanwhile, no new gap
    assert obs(t, 9) == [record(5, 9, 1)]
    assert obs(t, 8) == [record(5, 9, 0)]  # the same point rewritten with missing=0: recovered
    assert (t.open_gaps(), t.missing(), t.duplicates, t.gaps_opened, t.devices["d"].hi) == (0, 0, 0, 1, 14)


def test_duplicates_are_counted_and_change_no_gap() -> None:
    t = SeqTracker()
    obs(t, 0, 10)
    assert obs(t, 0, 10) == []  # a whole message redelivered
    assert obs(t, 8, 4) == []  # 8, 9 again and 10, 11 new
    assert (t.duplicates, t.devices["d"].hi) == (12, 11)
    obs(t, 15)  # gap 12..14
    assert obs(t, 10, 4) == [record(12, 14, 1)]  # 10, 11 replayed, 12, 13 fill
    assert (t.duplicates, holes(t)) == (14, [[[14, 14]]])
    assert obs(t, 12, 2) == [] and t.duplicates == 16  # filled already: duplicates now, no record rewrite


def test_one_backfill_across_two_gaps_rewrites_both() -> None:
    t = SeqTracker()
    obs(t, 0)
    obs(t, 5)  # gap 1..4
    obs(t, 10)  # gap 6..9
    assert t.gaps_opened == 2 and t.missing() == 8
    assert obs(t, 3, 5) == [record(1, 4, 2), record(6, 9, 2)]  # 3, 4 | 5 seen | 6, 7
    assert holes(t) == [[[1, 2]], [[8, 9]]] and t.duplicates == 1


def test_a_reboot_continues_the_sequence_without_a_gap() -> None:
    """seq is persisted on flash across reboots (docs/firmware.md); the boot counter is not the tracker's business."""
    t = SeqTracker()
    obs(t, 0, 30)
    # after a reboot the node's clock restarted: same seq stream, different times and period
    assert t.observe("d", 30, 10, 946_684_800, 300, {}) == []
    assert (t.open_gaps(), t.resets, t.duplicates, t.devices["d"].period) == (0, 0, 0, 300)
    # readings lost in a crash before they reached flash show as a gap after the reboot, timed from the last reading
    [line] = t.observe("d", 45, 1, 946_684_800 + 15 * 300, 300, {})
    assert line.startswith("kerbside_gaps,device=d first_seq=40i,last_seq=44i,missing=5i,period=300i ")
    assert line.endswith(f" {(946_684_800 + 10 * 300) * 10**9}")


@pytest.mark.parametrize("jump", [MAX_JUMP + 1, -(MAX_JUMP + 1)])
def test_a_jump_beyond_max_jump_is_a_reset_not_lost_data(jump: int) -> None:
    t = SeqTracker()
    obs(t, 2 * MAX_JUMP)
    obs(t, 2 * MAX_JUMP + 5)  # an open gap of 4
    assert obs(t, 2 * MAX_JUMP + 5 + jump) == []
    assert (t.resets, t.open_gaps(), t.missing(), t.devices["d"].hi) == (1, 0, 0, 2 * MAX_JUMP + 5 + jump)


def test_a_jump_of_exactly_max_jump_is_still_a_gap() -> None:
    t = SeqTracker()
    obs(t, 0)
    assert obs(t, MAX_JUMP) == [record(1, MAX_JUMP - 1, MAX_JUMP - 1)]
    assert t.resets == 0


def test_a_wrapped_uint32_sequence_is_a_reset() -> None:
    """The contract has no wrap: seq is a uint32 that never resets, and a batch that would overflow it is
    rejected (bad_header). A node that does come back at 0 was reflashed: tracking restarts, nothing is missing."""
    t = SeqTracker()
    obs(t, 2**32 - 3, 2)
    assert obs(t, 0, 5) == []
    assert (t.resets, t.missing(), t.devices["d"].hi) == (1, 0, 4)


def test_devices_are_tracked_apart() -> None:
    t = SeqTracker()
    obs(t, 0, device="a")
    obs(t, 100, device="b")
    assert obs(t, 3, device="a") == [record(1, 2, 2, device="a")]
    assert obs(t, 101, device="b") == []
    assert (t.open_gaps(), t.missing()) == (1, 2)


def test_only_the_newest_open_gaps_are_tracked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gaps, "MAX_OPEN_GAPS", 3)
    t = SeqTracker()
    obs(t, 0)
    for k in range(1, 6):
        obs(t, 2 * k)  # gaps at 1, 3, 5, 7, 9
    assert [h[0][0] for h in holes(t)] == [5, 7, 9]
    assert obs(t, 1) == [] and t.duplicates == 1  # its record stays in InfluxDB as it was; no longer tracked


def test_state_saved_is_the_state_at_the_cut_not_later(tmp_path: Path) -> None:
    t = SeqTracker(tmp_path / "s.json")
    obs(t, 0)
    obs(t, 5)
    state = t.snapshot()  # cut with the batch holding these two messages
    obs(t, 2)  # decoded into the next batch, not acked yet
    t.write(state)
    again = SeqTracker(tmp_path / "s.json")
    assert holes(again) == [[[1, 4]]]  # the unacked fill comes back from the broker and is accounted then
    assert obs(again, 2) == [record(1, 4, 3)]


def test_reload_skips_journal_entries_older_than_the_full_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between the full rewrite and emptying the journal leaves older entries: their cut numbers say so."""
    monkeypatch.setattr(gaps, "COMPACT_EVERY", 2)
    t = SeqTracker(tmp_path / "s.json")
    obs(t, 0)
    t.write(t.snapshot())  # cut 1: journal
    stale = (tmp_path / "s.journal").read_text()
    obs(t, 5)
    t.write(t.snapshot())  # cut 2: full rewrite, journal emptied
    (tmp_path / "s.journal").write_text(stale)  # as if the truncate never happened
    again = SeqTracker(tmp_path / "s.json")
    assert (again.devices["d"].hi, holes(again)) == (5, [[[1, 4]]])


def test_a_torn_journal_tail_is_cut_and_the_rest_applies(tmp_path: Path) -> None:
    t = SeqTracker(tmp_path / "s.json")
    obs(t, 0)
    t.write(t.snapshot())
    obs(t, 3)
    t.write(t.snapshot())
    good = (tmp_path / "s.journal").read_bytes()
    obs(t, 9)
    entry = t.snapshot().encode()
    (tmp_path / "s.journal").write_bytes(good + entry[: len(entry) // 2])  # crash mid-append: never acked
    again = SeqTracker(tmp_path / "s.json")  # opening writes nothing (a full or read-only disk must not stop it)
    assert (again.devices["d"].hi, holes(again)) == (3, [[[1, 2]]])
    obs(again, 4)
    later = again.snapshot()
    again.write(later)  # the next append cuts the torn entry first
    assert (tmp_path / "s.journal").read_bytes() == good + later.encode() + b"\n"
    assert SeqTracker(tmp_path / "s.json").devices["d"].hi == 4


def test_a_corrupt_state_file_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps({"cut": 3, "devices": {"d": {"hi": 1}}}))
    with pytest.raises(StorageError, match=r"s.json is corrupt .*move it aside"):
        SeqTracker(tmp_path / "s.json")


def test_the_journal_is_folded_into_the_file_before_it_passes_half_the_budget(tmp_path: Path) -> None:
    t = SeqTracker(tmp_path / "s.json", max_bytes=20_000)
    largest = 0
    for seq in range(400):  # 400 cuts of ~70 bytes: 28 kB of journal without folding
        obs(t, seq // 20, device=f"{seq % 20:08x}")  # in order: no gaps, a small state
        t.write(t.snapshot())
        largest = max(largest, t.bytes)
        assert t.bytes == sum(p.stat().st_size for p in tmp_path.iterdir() if p.suffix in (".json", ".journal"))
    assert largest <= 10_000
    assert (tmp_path / "s.json").stat().st_size > 1000, "folded into the full file"
    assert SeqTracker(tmp_path / "s.json", max_bytes=20_000).devices == t.devices


def test_a_state_that_outgrows_its_budget_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    t = SeqTracker(tmp_path / "s.json", max_bytes=4_000)
    for d in range(10):
        obs(t, 0, device=f"{d:08x}")
    t.write(t.snapshot())
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for d in range(10, 60):
        obs(t, 0, device=f"{d:08x}")
    with pytest.raises(gaps.StateFull, match=r"over state\.max_bytes = 4000: raise it"):
        t.write(t.snapshot())
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == saved


def test_jumps_are_not_gaps_while_the_stream_is_partial_nor_right_after(tmp_path: Path) -> None:
    """Another client with our client id takes some messages (and stores them): their absence is no gap."""
    t = SeqTracker()
    obs(t, 0)
    obs(t, 1, device="e")
    assert t.observe("d", 5, 1, T0 + 5 * P, P, {}, may_open=False) == []
    assert (t.gaps_suppressed, t.open_gaps(), t.devices["d"].hi) == (1, 0, 5)
    assert obs(t, 3) == [] and t.duplicates == 1  # the other client's share, redelivered to us: seen, not a fill
    t.rebase()  # the takeovers are over: each device's next jump is a new start too
    assert obs(t, 9) == [] and obs(t, 9, device="e") == []
    assert t.gaps_suppressed == 3
    assert obs(t, 12) == [record(10, 11, 2)]  # and after that, gaps again
