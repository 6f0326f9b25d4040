# kerbside node firmware - store-and-forward ring buffer on flash.
#
# Every reading is appended here before anything tries to send it, so a
# crash, a reboot or a week without network loses nothing until the buffer
# is full; then the OLDEST segment goes and the loss is counted ("drop").
#
# Layout (one directory): segment files named by the hex seq of their first
# record, each holding up to SEG records appended one by one; a "head" file
# with [next unacked seq, drops, boot, {boot: clock offset}] replaced by
# atomic rename. Records are framed [len][CBOR][crc8]: a power cut can only
# tear the last record of the newest segment, which open() truncates.
# Sequence numbers continue from the newest record, so they survive reboots;
# the newest segment is never deleted, even when fully acknowledged, because
# it remembers where the sequence stands.
import os

from knode import cbor
from knode.crc import crc8

SEG = 64
HEAD = "head"
# record fields
SEQ, BOOT, T, SYNCED, PERIOD, EXPECTED, SAMPLES, VALUES = range(8)


def _name(seq):
    return "%08x" % seq


def _record(data, pos, end):
    """A record is a flat CBOR array of ints and nulls (what append() writes).
    One function, no helper returning tuples: decoding a whole segment makes
    almost no garbage, which matters on a 64 KB heap."""
    ib = data[pos]
    if ib >> 5 != 4 or ib & 31 > 23:
        raise ValueError("not a record")
    n = ib & 31
    pos += 1
    rec = [None] * n
    for k in range(n):
        if pos >= end:
            raise ValueError("truncated")
        ib = data[pos]
        pos += 1
        if ib == 0xF6:
            continue
        major = ib >> 5
        v = ib & 31
        if major > 1 or v > 27:
            raise ValueError("not an int")
        if v >= 24:
            size = 1 << (v - 24)
            if pos + size > end:
                raise ValueError("truncated")
            v = 0
            while size:
                v = (v << 8) | data[pos]
                pos += 1
                size -= 1
        rec[k] = v if major == 0 else -1 - v
    if pos != end or n <= VALUES:
        raise ValueError("bad record")
    return rec


def _frames(data, skip=0, limit=SEG):
    """Up to limit decoded records of one segment's bytes after the first skip frames, and the
    length of the valid prefix (only meaningful when nothing was skipped or limited).
    Frame k of a segment holds seq first + k, so skipped frames are stepped over by their length
    alone: no CRC, no decoding (a bad length shows up as a CRC failure right after)."""
    out = []
    pos = 0
    n = len(data)
    while pos < n and skip:
        pos += data[pos] + 2
        skip -= 1
    while pos < n and len(out) < limit:
        ln = data[pos]
        end = pos + 1 + ln
        if ln == 0 or end + 1 > n or crc8(data, pos + 1, end) != data[end]:
            break
        try:
            rec = _record(data, pos + 1, end)
        except (ValueError, IndexError):
            break
        out.append(rec)
        pos = end + 1
    return out, pos


class Store:
    def __init__(self, root, max_records=20160):
        """max_records: capacity; a multiple of SEG is kept (two weeks of 1-minute readings by default)."""
        self.dir = root
        self.max_segs = max(2, max_records // SEG)
        try:
            os.mkdir(root)
        except OSError:
            pass
        self.head = 0
        self.drops = 0
        self.boot = 0
        self.offsets = {}
        self._load_head()
        self.segs = sorted(int(n, 16) for n in os.listdir(root) if len(n) == 8)
        self.tail_count = 0
        self.next_seq = self.head
        if self.segs:
            first = self.segs[-1]
            recs, good = self._read(first)
            size = os.stat(self._path(first))[6]
            if good < size:  # torn write from a power cut: keep the valid prefix
                self._rewrite(first, good)
            self.tail_count = len(recs)
            self.next_seq = first + len(recs)
            if not recs:
                os.remove(self._path(first))
                self.segs.pop()
                self.next_seq = max(self.head, first)
        if self.head < (self.segs[0] if self.segs else self.next_seq):
            self.head = self.segs[0] if self.segs else self.next_seq
        self.boot += 1
        self.offsets = dict((b, o) for b, o in self.offsets.items() if b >= self._oldest_boot())
        self._save_head()

    # -- persistence -------------------------------------------------------
    def _path(self, first):
        return self.dir + "/" + _name(first)

    def _read(self, first, start_seq=0, limit=SEG):
        with open(self._path(first), "rb") as f:
            data = f.read()
        return _frames(data, max(0, start_seq - first), limit)

    def _rewrite(self, first, good):
        with open(self._path(first), "rb") as f:
            data = f.read(good)
        tmp = self._path(first) + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, self._path(first))

    def _load_head(self):
        try:
            with open(self.dir + "/" + HEAD, "rb") as f:
                h = cbor.loads(f.read())
            self.head, self.drops, self.boot, self.offsets = h[0], h[1], h[2], h[3]
        except (OSError, ValueError, IndexError, TypeError):
            pass  # first boot, or a head lost mid-rename: rebuilt from the segments

    def _save_head(self):
        tmp = self.dir + "/" + HEAD + ".tmp"
        with open(tmp, "wb") as f:
            f.write(cbor.dumps([self.head, self.drops, self.boot, self.offsets]))
        os.rename(tmp, self.dir + "/" + HEAD)

    def _oldest_boot(self):
        if not self.segs or self.head >= self.next_seq:
            return self.boot
        recs = self.peek(1)
        return recs[0][BOOT] if recs else self.boot

    # -- API -----------------------------------------------------------------
    def __len__(self):
        return self.next_seq - self.head

    def append(self, t, synced, period, expected, samples, values):
        """Persist one reading of this boot; returns its sequence number."""
        seq = self.next_seq
        if not self.segs or self.tail_count >= SEG:
            self.segs.append(seq)
            self.tail_count = 0
            if len(self.segs) > self.max_segs:
                self._drop_oldest()
        rec = [seq, self.boot, t, 1 if synced else 0, period, expected, samples]
        rec.extend(values)
        body = cbor.dumps(rec)
        frame = bytearray(len(body) + 2)
        frame[0] = len(body)
        frame[1:1 + len(body)] = body
        frame[-1] = crc8(body)
        with open(self._path(self.segs[-1]), "ab") as f:
            f.write(frame)
        self.tail_count += 1
        self.next_seq = seq + 1
        return seq

    def _drop_oldest(self):
        first = self.segs.pop(0)
        end = self.segs[0]
        if self.head < end:
            self.drops += end - max(self.head, first)
            self.head = end
        os.remove(self._path(first))
        self._save_head()

    def set_offset(self, offset):
        """The clock just synced: readings of this boot get t + offset when sent."""
        self.offsets[self.boot] = offset
        self._save_head()

    def peek(self, limit):
        """Up to limit oldest unacknowledged records, re-stamped if their boot later synced."""
        out = []
        seq = self.head
        i = len(self.segs) - 1
        while i >= 0 and self.segs[i] > seq:
            i -= 1
        while i >= 0 and i < len(self.segs) and len(out) < limit:
            recs, _ = self._read(self.segs[i], seq, limit - len(out))
            for r in recs:
                if not r[SYNCED] and r[BOOT] in self.offsets:
                    r[T] += self.offsets[r[BOOT]]
                    r[SYNCED] = 1
                out.append(r)
            i += 1
        return out

    def ack(self, last_seq):
        """Everything up to last_seq reached the broker: free whole segments before it."""
        if last_seq < self.head:
            return
        self.head = last_seq + 1
        while len(self.segs) > 1 and self.segs[1] <= self.head:
            os.remove(self._path(self.segs.pop(0)))
        self._save_head()

