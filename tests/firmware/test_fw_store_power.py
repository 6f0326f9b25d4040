"""The store opens whatever a power cut or a full flash leaves, and loses nothing it does not count.

The flash is tests/firmware/flashfs.py, patched in for knode.ringbuf's `os` and `open`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from knode import ringbuf
from knode.ringbuf import SEQ

from .flashfs import FlashFS, PowerCut

SEG = 128  # bytes per segment: a session of a few dozen readings crosses many segment boundaries
BUDGET = (4 + ringbuf.META_BLOCKS) * SEG  # four segments: the session below overflows it
ROOT = "/buf"
POWER_CUT_POSITIONS = []  # filled by the exhaustive test, printed for the report


@pytest.fixture
def flash(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FlashFS]]:
    """The current flash: tests put a FlashFS in holder[0]; knode.ringbuf's os/open use it."""
    holder: list[FlashFS] = []

    class Os:
        def __getattr__(self, name: str) -> object:
            return getattr(holder[0].os, name)

    monkeypatch.setattr(ringbuf, "os", Os())
    monkeypatch.setattr(ringbuf, "open", lambda p, m="r": holder[0].open(p, m), raising=False)
    yield holder


def _values(k: int) -> list[int | None]:
    return [k, None if k % 3 else 7 * k, 250 + k, -(k % 5), 100000 * (k % 2)]


def session(log: list[tuple]) -> None:
    """Two boots of a node: readings, acknowledgements, a clock sync, an overflow, a reboot."""
    s = ringbuf.Store(ROOT, BUDGET, SEG)
    for k in range(10):
        log.append(("append", s.append(1000 + 60 * k, False, 60, 6, 6, _values(k)), 1000 + 60 * k))
    log.append(("ack", 5))
    s.ack(5)
    log.append(("acked", 5))
    s.set_offset(1767225600 - 1000)
    s = ringbuf.Store(ROOT, BUDGET, SEG)  # reboot
    for k in range(10, 40):  # more than four segments: the oldest are dropped and counted
        log.append(("append", s.append(1767300000 + 60 * k, True, 60, 6, 6, _values(k)), 1767300000 + 60 * k))
    last = s.next_seq - 3
    log.append(("ack", last))
    s.ack(last)
    log.append(("acked", last))


def _check_reopen(log: list[tuple]) -> None:
    s = ringbuf.Store(ROOT, BUDGET, SEG)  # must open, whatever the cut left
    appended = {e[1]: e for e in log if e[0] == "append"}
    acked = max([e[1] for e in log if e[0] == "ack"], default=-1)  # an ack under way may have reached flash
    recs = s.peek(1000)
    seqs = [r[SEQ] for r in recs]
    assert seqs == list(range(s.head, s.next_seq)), "oldest first, no gap"
    assert set(seqs) <= set(appended) | {max(appended, default=-1) + 1}, "nothing invented"
    for r in recs:
        if r[SEQ] in appended:
            k = r[SEQ]
            assert r[ringbuf.VALUES:] == _values(k), f"seq {k} came back changed"
    missing = [k for k in appended if k > acked and k not in seqs]
    assert all(k < s.head for k in missing), "a missing unacknowledged reading lies behind the head"
    assert len(missing) <= s.drops, f"{len(missing)} unacknowledged readings gone, {s.drops} counted"
    boots = [r[ringbuf.BOOT] for r in recs]
    assert all(b < s.boot for b in boots), "boot numbers never repeat"
    seq = s.append(1767400000, True, 60, 6, 6, _values(99))
    assert seq == s.next_seq - 1 and seq >= max(appended, default=-1)
    assert ringbuf.Store(ROOT, BUDGET, SEG).peek(1000)[-1][SEQ] == seq


def test_every_power_cut_position_of_a_session_reopens(flash: list[FlashFS]) -> None:
    flash[:] = [FlashFS()]
    session([])
    total = flash[0].positions
    assert total > 1000, "the session writes enough to be worth cutting"
    for p in range(total + 1):
        fs = FlashFS()
        fs.cut_at = p
        flash[:] = [fs]
        log: list[tuple] = []
        try:
            session(log)
        except PowerCut:
            pass
        fs.cut_at = None
        try:
            _check_reopen(log)
        except Exception as e:
            raise AssertionError(f"power cut at write position {p} of {total}: {e!r}") from e
    POWER_CUT_POSITIONS.append(total + 1)
    print(f"power cuts tried: {total + 1} write positions, every one reopened")


def test_leftover_temporaries_and_foreign_names_never_stop_the_store(flash: list[FlashFS]) -> None:
    fs = FlashFS()
    flash[:] = [fs]
    s = ringbuf.Store(ROOT, BUDGET, SEG)
    s.append(1000, True, 60, 6, 6, _values(1))
    for name in ("head.tmp", "0000000g", "notes.txt", "00000001.tmp"):  # head.tmp is 8 characters too
        with fs.open(f"{ROOT}/{name}", "wb") as f:
            f.write(b"\x00garbage")
    s = ringbuf.Store(ROOT, BUDGET, SEG)
    assert [r[SEQ] for r in s.peek(10)] == [0] and s.boot == 2
    assert fs.os.listdir(ROOT) == ["00000000", "head"], "temporaries removed"


def test_a_head_that_cannot_be_written_is_rebuilt_not_fatal(flash: list[FlashFS]) -> None:
    fs = FlashFS()
    flash[:] = [fs]
    s = ringbuf.Store(ROOT, BUDGET, SEG)
    s.append(1000, True, 60, 6, 6, _values(1))
    fs.memory_error_at = fs.ops + 1  # the head's write in the next ack runs out of RAM
    s.ack(0)
    assert s.errors == 1
    fs.files[f"{ROOT}/head"] = bytearray(b"\xff\x00")  # and a head that is garbage
    s = ringbuf.Store(ROOT, BUDGET, SEG)
    assert s.boot == 2 and s.next_seq == 1  # boot rebuilt from the newest record, sequence from the segments


def test_a_full_flash_drops_the_oldest_readings_counts_them_and_goes_on(flash: list[FlashFS]) -> None:
    # 8 blocks of flash in all; the budget would allow more, the file system runs out first
    fs = FlashFS(blocks=8, block=SEG, inline=16)
    flash[:] = [fs]
    s = ringbuf.Store(ROOT, 64 * SEG, SEG)
    stored = [s.append(1000 + 60 * k, True, 60, 6, 6, _values(k)) for k in range(200)]
    assert None not in stored, "every reading found room, by dropping the oldest"
    assert stored == list(range(200))
    assert s.drops > 0 and s.drops == s.head and len(s) == 200 - s.drops
    assert fs.used_blocks() <= 8
    s = ringbuf.Store(ROOT, 64 * SEG, SEG)
    assert s.drops == 200 - len(s) and [r[SEQ] for r in s.peek(500)] == list(range(s.head, 200))


def test_a_flash_with_no_room_at_all_counts_the_reading_as_dropped(flash: list[FlashFS]) -> None:
    fs = FlashFS(blocks=1, block=SEG, inline=16)
    flash[:] = [fs]
    s = ringbuf.Store(ROOT, 64 * SEG, SEG)
    got = [s.append(1000 + 60 * k, True, 60, 6, 6, _values(k)) for k in range(20)]
    assert got[0] == 0 and None in got
    assert s.drops == got.count(None) + s.head, "every reading that did not fit is counted"


def test_the_budget_is_the_flash_the_buffer_really_takes(flash: list[FlashFS]) -> None:
    """buffer_kb counts whole 4 KiB blocks: segments fill a block each (LittleFS gives every file whole blocks)."""
    fs = FlashFS()
    flash[:] = [fs]
    budget = 64 * 1024
    s = ringbuf.Store(ROOT, budget)
    for k in range(5000):
        s.append(1767225600 + 60 * k, True, 60, 6, 6, [120, 180, 250, 215, 640, 10130, 200, 800])
    assert s.drops > 0
    assert (fs.used_blocks() + ringbuf.META_BLOCKS) * 4096 <= budget
    per_seg = [len(d) for p, d in fs.files.items() if not p.endswith("head")]
    assert min(per_seg[:-1]) > 4096 - 64, "every full segment fills its block"
