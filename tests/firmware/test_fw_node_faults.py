"""The real knode.node.Node on a SimBoard without a broker: clock, watchdog, TLS context, storage faults.

No process starts: the broker address is a loopback port that refuses connections, so readings stay
on the node's flash, where the tests read them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kerbside.simulator.clock import US, VirtualClock
from kerbside.simulator.hardware import Faults, SimBoard, ntp_reply
from knode import net, node, ntp, ringbuf
from knode.hal import EPOCH_2000

from .conftest import SITE, node_config

START = 1_767_225_600  # 2026-01-01 00:00 UTC, a period boundary


@pytest.fixture
def refusing_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _board(root: Path, power_on: float, cfg: dict, faults: Faults | None = None) -> SimBoard:
    clock = VirtualClock(power_on, 1e6)
    b = SimBoard(1, root, clock, SITE, cfg["kit"], 3, faults)
    (root / "config.json").write_text(json.dumps(cfg))
    return b


def _run(board: SimBoard, seconds: float, setup: Callable[[node.Node], None] | None = None) -> node.Node:
    """One boot of the node for `seconds` of simulated time, then power off."""

    async def go() -> node.Node:
        board.power_on()
        n = node.Node(board)
        if setup:
            setup(n)
        n.start()
        await board.clock.sleep_until_us(board.clock.now_us() + round(seconds * US), last=True)
        n.stop()
        await asyncio.gather(*n.tasks, return_exceptions=True)
        return n

    return asyncio.run(go())


def _records(root: Path) -> list[list]:
    return ringbuf.Store(str(root / "buf")).peek(100000)


# -- the clock -------------------------------------------------------------------------------------

def _record_feeds(board: Any, feeds: list[int]) -> None:
    """Every watchdog feed the node makes, at board time."""
    real = board.watchdog

    def wdt(ms: int):  # type: ignore[no-untyped-def]
        w = real(ms)
        w.feed = lambda: feeds.append(board.time())  # type: ignore[method-assign]
        return w

    board.watchdog = wdt  # type: ignore[method-assign]


def test_power_on_in_the_first_second_of_a_period_gives_no_duplicate_timestamp(tmp_path: Path,
                                                                              refusing_port: int) -> None:
    """NTP answers at once: the interval under way is already the UTC interval it belongs to."""
    cfg = node_config(port=refusing_port, sample=60)
    board = _board(tmp_path, START + 0.3, cfg)
    _run(board, 600)
    recs = _records(tmp_path)
    times = [r[ringbuf.T] for r in recs]
    assert len(times) == len(set(times)), f"two readings share a timestamp (InfluxDB keeps one): {times}"
    assert times == list(range(START, START + 600, 60))
    assert all(r[ringbuf.SYNCED] for r in recs)


def test_two_boots_that_never_sync_never_reuse_a_timestamp(tmp_path: Path, refusing_port: int) -> None:
    cfg = node_config(port=refusing_port, sample=60)
    board = _board(tmp_path, START - 1, cfg, Faults(never_sync=True))
    _run(board, 3600)
    board.clock._now += 600 * US  # ten minutes without power
    _run(board, 3600)
    recs = _records(tmp_path)
    assert {r[ringbuf.BOOT] for r in recs} == {1, 2} and not any(r[ringbuf.SYNCED] for r in recs)
    times = [r[ringbuf.T] for r in recs]
    assert times == sorted(set(times)), "the second boot's clock starts after the first boot's last reading"
    assert times[0] == EPOCH_2000 and len(times) == 120


def test_the_clock_starts_at_the_last_known_good_time_when_ntp_is_out_of_reach(tmp_path: Path,
                                                                               refusing_port: int) -> None:
    cfg = node_config(port=refusing_port, sample=60)
    board = _board(tmp_path, START - 1, cfg)
    _run(board, 3600)  # synced: its readings are in 2026
    board.faults.never_sync = True
    board.clock._now += 600 * US
    board.power_on()
    assert board.time() < EPOCH_2000 + 10
    n = node.Node(board)
    t = board.time()
    assert t == START + 3540, "the end of its last reading: good enough for a certificate's validity check"
    assert t % 60 == 0 and n.synced is False, "but not called synced"


def _ntp_answers(board: SimBoard, make: Callable[[bytes, int], bytes | None]) -> None:
    board.ntp_answer = make


@pytest.mark.parametrize(("answer", "why"), [
    (lambda req, now: ntp_reply(req, now, stratum=0)[:12] + b"DENY" + ntp_reply(req, now)[16:], "kiss-of-death"),
    (lambda req, now: ntp_reply(req, now, li=3), "leap indicator"),
    (lambda req, now: ntp_reply(req, now, stratum=16), "stratum 16"),
    (lambda req, now: ntp_reply(b"\0" * 48, now), "not to our request"),
    (lambda req, now: ntp_reply(req, now)[:32] + b"\0" * 16, "zero timestamp"),  # ntptime would say 2036
    (lambda req, now: ntp_reply(req, 1_000_000_000 * US), "before the last known good time"),
])
def test_ntp_answers_that_are_not_sane_never_set_the_clock(tmp_path: Path, refusing_port: int,
                                                           answer: Callable, why: str) -> None:
    cfg = node_config(port=refusing_port, sample=60)
    board = _board(tmp_path, START - 1, cfg)
    board.ntp_answer = answer
    n = _run(board, 300)
    assert not n.synced and (why in n.ntp_err or n.ntp_banned), n.ntp_err
    assert board.time() < EPOCH_2000 + 400, "the RTC was never set"


def test_ntp_kiss_of_death_deny_stops_asking_that_server(tmp_path: Path, refusing_port: int) -> None:
    cfg = node_config(port=refusing_port, sample=60, ntp=["bad.example", "good.example"])
    board = _board(tmp_path, START - 1, cfg)
    asked: list[str] = []

    async def exchange(host: str, port: int, data: bytes, timeout_ms: int) -> bytes | None:
        asked.append(host)
        now = board.clock.now_us()
        if host == "bad.example":
            r = bytearray(ntp_reply(data, now, stratum=0))
            r[12:16] = b"DENY"
            return bytes(r)
        return None  # the good one is down for now

    board.udp_exchange = exchange  # type: ignore[method-assign]
    n = _run(board, 600)
    assert asked.count("bad.example") == 1 and asked.count("good.example") > 3
    assert n.ntp_banned == ["bad.example"] and not n.synced


def test_ntp_unit_checks() -> None:
    nonce = 0x1234_5678_9ABC_DEF1
    now = START * US + 250_000
    good = ntp_reply(ntp.request(nonce), now)
    t, rtt = ntp.parse(good, nonce, 0, 0, START - 10)
    assert t == START * 1000 + 250 and rtt == 0
    with pytest.raises(ntp.NTPError, match="short"):
        ntp.parse(good[:40], nonce, 0, 0, START)
    with pytest.raises(ntp.NTPError, match="mode"):
        ntp.parse(b"\x23" + good[1:], nonce, 0, 0, START)
    with pytest.raises(ntp.NTPError, match="no answer"):
        ntp.parse(None, nonce, 0, 0, START)
    # era 1 (after 2036-02-07): NTP seconds wrap, the floor picks the era
    late = ntp_reply(ntp.request(nonce), (2_200_000_000) * US)
    assert ntp.parse(late, nonce, 0, 0, START)[0] == 2_200_000_000 * 1000


# -- the watchdog ----------------------------------------------------------------------------------

def test_the_watchdog_starves_when_the_link_hangs_not_only_when_sampling_does(tmp_path: Path,
                                                                              refusing_port: int,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = node_config(port=refusing_port, sample=60)
    board = _board(tmp_path, START - 1, cfg)
    feeds: list[int] = []

    async def hang(*a: object, **k: object) -> bool:
        await asyncio.Event().wait()  # a wait nobody bounded: what the old CONNECT/TLS path could do
        return False

    def setup(n: node.Node) -> None:
        _record_feeds(board, feeds)

    monkeypatch.setattr(net, "join_wifi", hang)
    n = _run(board, 3 * 3600, setup)
    assert n.produced >= 179, "sampling went on"
    assert feeds and max(feeds) - min(feeds) <= node.LINK_STALL_S + node.WDT_MS // 4000, \
        "no feed after the link stopped making progress: the hardware watchdog resets the node"


def test_the_watchdog_keeps_being_fed_while_the_broker_is_unreachable(tmp_path: Path, refusing_port: int) -> None:
    cfg = node_config(port=refusing_port, sample=60)
    board = _board(tmp_path, START - 1, cfg)
    feeds: list[int] = []

    def setup(n: node.Node) -> None:
        _record_feeds(board, feeds)

    _run(board, 3 * 3600, setup)
    gaps = [b - a for a, b in itertools.pairwise(feeds)]
    assert len(feeds) > 300 and max(gaps) <= node.WDT_MS // 4000 + 1, "every bounded failure is progress"


# -- TLS -------------------------------------------------------------------------------------------

class _MicroPythonSSL(types.ModuleType):
    """micropython-lib's ssl module as the node sees it: SSLContext starts with verify_mode = CERT_NONE."""

    PROTOCOL_TLS_CLIENT = 0
    CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED = 0, 1, 2

    def __init__(self) -> None:
        super().__init__("ssl")
        self.made: list[object] = []
        mod = self

        class SSLContext:
            def __init__(self, protocol: int) -> None:
                self.protocol = protocol
                self.verify_mode = mod.CERT_NONE
                self.cadata: bytes | None = None
                mod.made.append(self)

            def load_verify_locations(self, cafile: str | None = None, cadata: bytes | None = None) -> None:
                self.cadata = cadata

        self.SSLContext = SSLContext


def test_the_tls_context_requires_the_broker_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _MicroPythonSSL()
    monkeypatch.setitem(sys.modules, "ssl", fake)
    (tmp_path / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    board = types.SimpleNamespace(path=lambda p: str(tmp_path) + p)
    ctx = net.tls_context(board, {"tls": True, "ca": "/ca.pem"})
    assert ctx.verify_mode == fake.CERT_REQUIRED, "micropython-lib defaults to CERT_NONE: anyone could pose as the broker"
    assert ctx.cadata == b"-----BEGIN CERTIFICATE-----\n"
    with pytest.raises(ValueError, match=r"needs mqtt\.ca"):
        net.tls_context(board, {"tls": True, "ca": ""})


def test_one_tls_context_per_boot_however_often_it_reconnects(tmp_path: Path, refusing_port: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _MicroPythonSSL()
    monkeypatch.setitem(sys.modules, "ssl", fake)
    (tmp_path / "ca.pem").write_bytes(b"ca")
    cfg = node_config(port=refusing_port, sample=60)
    cfg["mqtt"].update(tls=True, ca="/ca.pem")
    board = _board(tmp_path, START - 1, cfg)
    attempts: list[object] = []

    async def refuse(host: str, port: int, ssl: object = None) -> tuple:
        attempts.append(ssl)
        raise ConnectionRefusedError(111, "refused")

    board.open_connection = refuse  # type: ignore[method-assign]
    _run(board, 2 * 3600)
    assert len(attempts) > 10 and len(fake.made) == 1 and all(a is fake.made[0] for a in attempts)


# -- storage ---------------------------------------------------------------------------------------

def test_a_store_that_fails_never_stops_sampling(tmp_path: Path, refusing_port: int) -> None:
    cfg = node_config(port=refusing_port, sample=60)
    board = _board(tmp_path, START - 1, cfg)

    def setup(n: node.Node) -> None:
        real = n.store.append
        calls = [0]

        def flaky(*a: object) -> int | None:
            calls[0] += 1
            if calls[0] % 3 == 0:
                raise OSError(5, "EIO")  # a flash error that is not a full file system
            return real(*a)

        n.store.append = flaky  # type: ignore[method-assign]

    n = _run(board, 3600, setup)
    assert n.produced == 60 and n.store.drops == 20 and len(n.store) == 40
