# kerbside node firmware - store-and-forward ring buffer on flash.
#
# Every reading is appended here before anything tries to send it, so a
# crash, a reboot or a week without network loses nothing until the buffer
# is full; then the OLDEST segment goes and the loss is counted ("drop").
#
# Layout (one directory): segment files named by the hex seq of their first
# record (8 hex digits), each holding records appended one by one up to one
# flash block (SEG_BYTES: LittleFS gives every file whole 4 KiB blocks, so a
# segment that filled only part of one would waste the rest); a "head" file
# with [next unacked seq, drops, boot, {boot: clock offset}, last good time]
# replaced by atomic rename. Records are framed [len][CBOR][crc8].
#
# Whatever a power cut (or a full filesystem) leaves, Store() opens: names
# that are not segments are ignored and leftover temporaries removed; a torn
# last record ends its segment (the next reading starts a new one, nothing is
# rewritten); a lost or unreadable head is rebuilt from the segments (resend
# rather than lose: the collector de-duplicates). Sequence numbers continue
# from the newest record, so they survive reboots; the newest segment is never
# deleted, even when fully acknowledged, because it remembers where the
# sequence and the clock stand.
import os

from knode import cbor
from knode.crc import crc8

SEG_BYTES = 4096  # one LittleFS block on the ESP32's flash
META_BLOCKS = 4   # the directory's metadata pairs and the head, out of the same budget
HEAD = "head"
ENOSPC = 28
# record fields
SEQ, BOOT, T, SYNCED, PERIOD, EXPECTED, SAMPLES, VALUES = range(8)


def _name(seq):
    return "%08x" % seq


def _seg(name):
    """The first seq of a segment file name, or None for anything else (head, leftovers)."""
    if len(name) != 8:
        return None
    try:
        return int(name, 16)
    except ValueError:
        return None


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


def _frames(data, skip=0, limit=1 << 30):
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


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


class Store:
    def __init__(self, root, budget_bytes=512 * 1024, seg_bytes=SEG_BYTES):
        """budget_bytes: flash the buffer may take, in whole blocks including its directory's metadata
        (seg_bytes is the flash block size; tests make it small to exercise many segments)."""
        self.dir = root
        self.seg_bytes = seg_bytes
        self.max_segs = max(2, budget_bytes // seg_bytes - META_BLOCKS)
        try:
            os.mkdir(root)
        except OSError:
            pass
        self.head = 0
        self.drops = 0
        self.boot = 0
        self.offsets = {}
        self.lkg = 0  # last known good time (Unix s): the clock never starts below it
        self.errors = 0  # head writes that failed (full filesystem): the head is rebuilt if lost
        self._load_head()
        segs = []
        for name in os.listdir(root):
            first = _seg(name)
            if first is not None:
                segs.append(first)
            elif name != HEAD:
                _remove(self.dir + "/" + name)  # head.tmp and the like from an interrupted write
        segs.sort()
        self.segs = segs
        self.tail_bytes = 0
        self.tail_full = False
        self.next_seq = self.head
        self.last = None  # the newest record on flash (clock floor, boot floor)
        while self.segs:
            first = self.segs[-1]
            data = self._data(first)
            recs, good = _frames(data)
            if recs:
                self.next_seq = first + len(recs)
                self.tail_bytes = good
                self.tail_full = good < len(data)  # torn by a power cut: the next record starts a new segment
                self.last = recs[-1]
                break
            _remove(self._path(first))  # created but never holding a whole record
            self.segs.pop()
            self.next_seq = max(self.head, first)
        if self.head < (self.segs[0] if self.segs else self.next_seq):
            self.head = self.segs[0] if self.segs else self.next_seq
        if self.head > self.next_seq:
            self.head = self.next_seq  # a head from a lost future (flash rolled back): resend, never skip
        if self.last is not None and self.last[BOOT] > self.boot:
            self.boot = self.last[BOOT]  # the head was lost: boots stay unique
        self.boot += 1
        self.offsets = dict((b, o) for b, o in self.offsets.items() if b >= self._oldest_boot())
        self._save_head()

    # -- persistence -------------------------------------------------------
    def _path(self, first):
        return self.dir + "/" + _name(first)

    def _data(self, first):
        with open(self._path(first), "rb") as f:
            return f.read()

    def _load_head(self):
        try:
            with open(self.dir + "/" + HEAD, "rb") as f:
                h = cbor.loads(f.read())
            self.head, self.drops, self.boot, self.offsets = int(h[0]), int(h[1]), int(h[2]), dict(h[3])
            self.lkg = int(h[4]) if len(h) > 4 else 0
        except (OSError, ValueError, IndexError, TypeError, KeyError, MemoryError):
            self.head = self.drops = self.boot = self.lkg = 0  # first boot, or unreadable: rebuilt from the segments
            self.offsets = {}

    def _save_head(self):
        """Best effort: a head that cannot be written (full flash, no RAM) is rebuilt from the
        segments on the next start, so it must never stop the node."""
        tmp = self.dir + "/" + HEAD + ".tmp"
        try:
            data = cbor.dumps([self.head, self.drops, self.boot, self.offsets, self.lkg])
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, self.dir + "/" + HEAD)
        except (OSError, MemoryError):
            self.errors += 1
            _remove(tmp)

    def _oldest_boot(self):
        if not self.segs or self.head >= self.next_seq:
            return self.boot
        recs = self.peek(1)
        return recs[0][BOOT] if recs else self.boot

    # -- API -----------------------------------------------------------------
    def __len__(self):
        return self.next_seq - self.head

    def last_time(self):
        """The earliest time the clock may show now (Unix s): after the newest reading on flash
        (re-stamped if its boot synced) and after the last known good time in the head."""
        t = self.lkg
        r = self.last
        if r is not None:
            end = r[T] + r[PERIOD]
            if not r[SYNCED] and r[BOOT] in self.offsets:
                end += self.offsets[r[BOOT]]
            if end > t:
                t = end
        return t

    def append(self, t, synced, period, expected, samples, values):
        """Persist one reading of this boot; returns its sequence number, or None if the flash
        could not take it even after dropping the oldest readings (then it is counted as dropped)."""
        seq = self.next_seq
        rec = [seq, self.boot, t, 1 if synced else 0, period, expected, samples]
        rec.extend(values)
        body = cbor.dumps(rec)
        frame = bytearray(len(body) + 2)
        frame[0] = len(body)
        frame[1:1 + len(body)] = body
        frame[-1] = crc8(body)
        while True:
            if not self.segs or self.tail_full or self.tail_bytes + len(frame) > self.seg_bytes:
                self.segs.append(seq)
                self.tail_bytes = 0
                self.tail_full = False
                if len(self.segs) > self.max_segs:
                    self._drop_oldest()
            try:
                with open(self._path(self.segs[-1]), "ab") as f:
                    f.write(frame)
                break
            except OSError as e:
                if e.args[0] != ENOSPC:
                    raise
                # Full filesystem: whatever reached the file is cut off when it is next opened.
                self.tail_full = True
                if self.segs[-1] == seq:
                    _remove(self._path(self.segs.pop()))  # the segment this record was to start
                if len(self.segs) < 2:  # only the newest left: it keeps the sequence, nothing to give up
                    self.drops += 1
                    self._save_head()
                    return None
                self._drop_oldest()
        self.tail_bytes += len(frame)
        self.next_seq = seq + 1
        self.last = rec
        return seq

    def _drop_oldest(self):
        first = self.segs.pop(0)
        end = self.segs[0]
        if self.head < end:
            self.drops += end - max(self.head, first)
            self.head = end
        self._save_head()  # count the loss before it happens: a power cut in between must not hide it
        _remove(self._path(first))

    def set_offset(self, offset):
        """The clock just synced: readings of this boot get t + offset when sent."""
        self.offsets[self.boot] = offset
        self._save_head()

    def set_lkg(self, t):
        """Remember a time the clock is known to have passed (written with the next head)."""
        if t > self.lkg:
            self.lkg = t

    def peek(self, limit):
        """Up to limit oldest unacknowledged records, re-stamped if their boot later synced."""
        out = []
        seq = self.head
        i = len(self.segs) - 1
        while i >= 0 and self.segs[i] > seq:
            i -= 1
        while i >= 0 and i < len(self.segs) and len(out) < limit:
            first = self.segs[i]
            recs, _ = _frames(self._data(first), max(0, seq - first), limit - len(out))
            for r in recs:
                if r[SEQ] < seq:
                    continue
                if not r[SYNCED] and r[BOOT] in self.offsets:
                    r[T] += self.offsets[r[BOOT]]
                    r[SYNCED] = 1
                out.append(r)
                seq = r[SEQ] + 1
            i += 1
        return out

    def ack(self, last_seq):
        """Everything up to last_seq reached the broker: free whole segments before it."""
        if last_seq < self.head:
            return
        self.head = last_seq + 1
        self._save_head()
        while len(self.segs) > 1 and self.segs[1] <= self.head:
            _remove(self._path(self.segs.pop(0)))
