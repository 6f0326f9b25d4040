# kerbside node firmware - jittered exponential backoff.
#
# After a city-wide outage every node loses Wi-Fi and the broker at the same
# moment; without jitter they would all retry at the same moments and knock
# the broker over again. "Full jitter": each wait is uniform in
# [base, min(cap, base * 2**(attempt + 1))], so retries spread out and still
# grow - the first one too (1-2 s), or the whole fleet would retry at 1 s.


class Backoff:
    def __init__(self, randbits, base_ms=1000, cap_ms=300000):
        self.randbits = randbits
        self.base = base_ms
        self.cap = cap_ms
        self.attempt = 0

    def next_ms(self):
        hi = self.base << min(self.attempt + 1, 20)
        if hi > self.cap:
            hi = self.cap
        self.attempt += 1
        span = hi - self.base
        if span <= 0:
            return self.base
        return self.base + self.randbits(24) % (span + 1)

    def reset(self):
        self.attempt = 0
