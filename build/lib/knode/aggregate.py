# kerbside node firmware - per-interval aggregation into readings.
#
# Samples arrive as scaled ints in the wire contract's units (or None when a
# sensor gave nothing); a reading is (samples, values): how many sample slots
# produced anything (data capture = samples / expected) and the mean of each
# channel, rounded half away from zero, None where a channel had no sample.
# Fixed lists allocated once: nothing grows per sample on a 64 KB heap.


def _mean(s, n):
    if s >= 0:
        return (2 * s + n) // (2 * n)
    return -((-2 * s + n) // (2 * n))


class Mean:
    def __init__(self, nch):
        self.nch = nch
        self.sums = [0] * nch
        self.counts = [0] * nch
        self.samples = 0

    def add(self, values):
        got = False
        for i in range(self.nch):
            v = values[i]
            if v is not None:
                self.sums[i] += v
                self.counts[i] += 1
                got = True
        if got:
            self.samples += 1

    def take(self):
        vals = [None] * self.nch
        for i in range(self.nch):
            n = self.counts[i]
            if n:
                vals[i] = _mean(self.sums[i], n)
            self.sums[i] = 0
            self.counts[i] = 0
        s = self.samples
        self.samples = 0
        return s, vals


# Vehicle length classes, upper bounds in decimetres (EU practice for
# length-based classification of single-loop/radar detectors).
CLASS_LIMITS_DM = (25, 55, 75)  # motorcycle < 2.5 m <= car < 5.5 m <= van < 7.5 m <= heavy


def length_class(length_dm, limits=CLASS_LIMITS_DM):
    for i in range(len(limits)):
        if length_dm < limits[i]:
            return i
    return len(limits)


class Traffic:
    """Counts per direction and class, and mean speed per direction (0.1 km/h)."""

    def __init__(self, limits=CLASS_LIMITS_DM):
        self.limits = limits
        self.counts = [0] * 8
        self.speed = [0, 0]
        self.samples = 0

    def vehicle(self, direction, length_dm, speed_dkmh):
        self.counts[direction * 4 + length_class(length_dm, self.limits)] += 1
        self.speed[direction] += speed_dkmh

    def sampled(self):
        """The detector answered its poll in this sample slot (data capture)."""
        self.samples += 1

    def take(self):
        c = self.counts
        vals: list = [None] * 10
        for i in range(8):
            vals[i] = c[i]
        for d in (0, 1):
            n = c[4 * d] + c[4 * d + 1] + c[4 * d + 2] + c[4 * d + 3]
            vals[8 + d] = _mean(self.speed[d], n) if n else None
            self.speed[d] = 0
        for i in range(8):
            c[i] = 0
        s = self.samples
        self.samples = 0
        if not s:
            return 0, [None] * 10  # detector dead: no counts, not zero counts
        return s, vals
