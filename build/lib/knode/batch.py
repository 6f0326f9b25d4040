# kerbside node firmware - buffered records -> readings messages.
#
# A message must be a run of consecutive readings: same boot, same clock
# state (synced or not), same period and expected samples, seq + 1 and
# t + period from one to the next. Anything else starts a new message, so
# the collector can place every reading exactly from (seq, t0, period).
from knode import wire
from knode.ringbuf import BOOT, EXPECTED, PERIOD, SAMPLES, SEQ, SYNCED, VALUES, T

MAX_BATCH = 60  # readings per message: < 2 KB of payload, bounded RAM while encoding


def first_run(recs, max_n=MAX_BATCH):
    """How many leading records form one message."""
    if not recs:
        return 0
    a = recs[0]
    n = 1
    while n < len(recs) and n < max_n:
        r = recs[n]
        p = recs[n - 1]
        if (r[BOOT] != a[BOOT] or r[SYNCED] != a[SYNCED] or r[PERIOD] != a[PERIOD] or r[EXPECTED] != a[EXPECTED]
                or r[SEQ] != p[SEQ] + 1 or r[T] != p[T] + a[PERIOD]):
            break
        n += 1
    return n


def encode_run(dev, kit, recs, n):
    """The readings message for recs[:n] (a run from first_run)."""
    a = recs[0]
    readings = [(r[SAMPLES], r[VALUES:]) for r in recs[:n]]
    return wire.encode_readings(dev, a[SEQ], a[BOOT], bool(a[SYNCED]), kit, a[T], a[PERIOD], a[EXPECTED], readings)
