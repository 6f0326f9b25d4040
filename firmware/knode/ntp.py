# kerbside node firmware - SNTP client (RFC 4330 / RFC 5905 client side).
#
# Why not ntptime: it blocks the event loop for up to a second, sets the RTC
# before anything checks the answer, turns a zero timestamp into 2036 and
# ignores kiss-of-death. Here the answer is checked first and the caller sets
# the clock: leap indicator not "alarm", server mode, stratum 1..15, our own
# transmit timestamp echoed back (an off-path spoofer cannot know it), a
# non-zero transmit timestamp, and a time not before the last time this node
# knew to be good. Kiss-of-death (stratum 0) is reported so the caller backs
# off (RATE) or stops asking that server (DENY, RSTR), as RFC 5905 7.4 says.
import struct

NTP_PORT = 123
NTP_UNIX = 2208988800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
ERA = 1 << 32
TIMEOUT_MS = 1000
MAX_RTT_MS = 5000  # a slower answer says more about the network than about the time


class NTPError(ValueError):
    pass


class KissOfDeath(NTPError):
    def __init__(self, code):
        super().__init__("kiss-of-death " + code)
        self.code = code


def request(nonce):
    """A client request (version 4, mode 3) whose transmit timestamp is the 64-bit nonce."""
    pkt = bytearray(48)
    pkt[0] = 0x23  # LI 0, VN 4, mode 3
    struct.pack_into("!Q", pkt, 40, nonce)
    return pkt


def _unix_ms(sec, frac, floor_s):
    """NTP seconds+fraction -> Unix ms; the era is the one that puts the time at or after floor_s."""
    t = sec - NTP_UNIX
    while t < floor_s - (ERA >> 1):
        t += ERA
    return t * 1000 + ((frac * 1000 + (1 << 31)) >> 32)  # nearest ms


def parse(reply, nonce, t1_ms, t4_ms, floor_s):
    """(server time at t4 in Unix ms, round-trip ms) from a reply to request(nonce).

    t1_ms/t4_ms: the node's clock when the request left and the reply came. Raises NTPError
    (KissOfDeath for stratum 0) for anything that is not a sane, synchronised answer to us."""
    if reply is None:
        raise NTPError("no answer")
    if len(reply) < 48:
        raise NTPError("short reply")
    li, vn, mode = reply[0] >> 6, (reply[0] >> 3) & 7, reply[0] & 7
    stratum = reply[1]
    if mode != 4:
        raise NTPError("not a server reply (mode %d)" % mode)
    if vn < 3:
        raise NTPError("version %d" % vn)
    if stratum == 0:
        raise KissOfDeath(bytes(reply[12:16]).decode())
    if stratum > 15:
        raise NTPError("stratum %d: server not synchronised" % stratum)
    if li == 3:
        raise NTPError("leap indicator: server clock not synchronised")
    orig = struct.unpack_from("!Q", reply, 24)[0]
    if orig != nonce:
        raise NTPError("reply is not to our request")
    rx_s, rx_f, tx_s, tx_f = struct.unpack_from("!IIII", reply, 32)
    if tx_s == 0 or rx_s == 0:
        raise NTPError("zero timestamp: server not synchronised")
    t2 = _unix_ms(rx_s, rx_f, floor_s)
    t3 = _unix_ms(tx_s, tx_f, floor_s)
    rtt = (t4_ms - t1_ms) - (t3 - t2)
    if rtt < 0:
        rtt = 0
    if rtt > MAX_RTT_MS:
        raise NTPError("round trip %d ms" % rtt)
    now = t3 + rtt // 2
    if now < floor_s * 1000:
        raise NTPError("time %d is before the last known good time %d" % (now // 1000, floor_s))
    return now, rtt


async def sync(node):
    """Ask each of the node's time servers until one gives a sane answer; set the clock only then.
    Here rather than in knode.node so its bytecode is in RAM only while the node asks."""
    from knode import node as node_mod
    from knode.hal import SYNCED_AFTER
    b = node.board
    floor = max(node.store.last_time(), SYNCED_AFTER)
    retry = node_mod.NTP_RETRY_S
    for host in node.cfg["ntp"] or [node.cfg["mqtt"]["host"]]:  # none given: the broker's host
        if host in node.ntp_banned:
            continue
        nonce = (b.randbits(30) << 34) | (b.randbits(30) << 4) | 1
        t1 = b.time_ms()
        reply = await b.udp_exchange(host, NTP_PORT, request(nonce), TIMEOUT_MS)
        t4 = b.time_ms()
        try:
            now_ms, _ = parse(reply, nonce, t1, t4, floor)
        except KissOfDeath as e:
            if e.code == "RATE":
                retry = node_mod.NTP_RATE_S
            else:
                node.ntp_banned.append(host)  # DENY, RSTR: never ask it again this boot
            node.ntp_err = "%s: %s" % (host, e)
            continue
        except NTPError as e:
            node.ntp_err = "%s: %s" % (host, e)
            continue
        local = b.time_ms()
        now_ms += local - t4
        step = now_ms - local
        if node.synced and (step > node_mod.MAX_STEP_MS or step < -node_mod.MAX_STEP_MS):
            node.ntp_err = "%s: refused a %d s step of a synced clock" % (host, step // 1000)
            continue
        b.set_time(now_ms)
        jump = (step + 500) // 1000
        if not node.synced:
            node.jump = jump
            node.store.set_offset(jump)
            node.boot_t += jump
            node.synced = True
        node.alive_t += jump
        node.link_t += jump
        node.synced_at = b.time()
        node.store.set_lkg(node.synced_at)
        node.ntp_next = node.synced_at + node_mod.RESYNC_S
        return True
    node.ntp_next = b.time() + retry
    return False
