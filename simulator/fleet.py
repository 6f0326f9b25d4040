"""Run many virtual nodes, each executing the real firmware (knode.node.Node), in one asyncio loop.

    summary = asyncio.run(Fleet(FleetConfig(broker="mqtt://127.0.0.1:1883", air=3, traffic=2,
                                            duration=86400, speedup=2000)).run())

Each node has its own flash directory (ring buffer, config), its own fake
hardware (simulator.hardware.SimBoard) and its own TCP relay to the broker
(simulator.proxy.Relay) through which Wi-Fi drops and broker outages are
injected. Time is simulated (simulator.clock.VirtualClock): it waits for every
node, so each node takes every reading it is due however loaded the host is,
and the fault schedule and the end of the run happen at exact simulated
instants. What each node must take is known before the run starts
(simulator.expected): `NodeStats.expected` against `NodeStats.produced`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import random
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kerbside.simulator import expected as expect
from kerbside.simulator.city import CITY_BBOX, Site, inside
from kerbside.simulator.clock import US, VirtualClock, to_us
from kerbside.simulator.hardware import Faults, Reboot, SimBoard
from kerbside.simulator.proxy import Relay
from kerbside.simulator.reference import ReferenceStation, SensedSite
from knode import node as knode_node

Window = tuple[float, float]
"""(start offset, length) in simulated seconds from the fleet's start."""


@dataclass
class FaultPlan:
    wifi_drop_nodes: int = 0
    """How many nodes lose Wi-Fi (each in its own window, staggered)."""
    wifi_drop_s: float = 3600
    broker_down: list[Window] = field(default_factory=list)
    """Windows in which no node reaches the broker (relays refuse), e.g. [(7200, 1800)]."""
    reboot_nodes: int = 0
    """How many nodes lose power once, at a random moment."""
    never_sync_nodes: int = 0
    broken_sensor_nodes: int = 0
    offline: dict[int, list[Window]] = field(default_factory=dict)
    """Explicit Wi-Fi outages per node index (tests)."""


@dataclass
class FleetConfig:
    broker: str = "mqtt://127.0.0.1:1883"
    brokers: list[str] = field(default_factory=list)
    """Every node of a clustered broker (mqtt://host:port), instead of `broker` alone. Each node gets them all
    (mqtt.brokers), starting at its own place in the list so the fleet spreads evenly, and its firmware moves
    to the next one when a broker fails."""
    air: int = 3
    traffic: int = 2
    seed: int = 1
    start: float | None = None
    """Simulated unix start time; default: now minus duration, down to a period boundary (the data end now)."""
    duration: float = 3600
    speedup: float = 60
    period: int = 60
    sample: int = 60
    """Nodes in the field sample every 10 s; 60 keeps 50 nodes at x3000 on one core (docs/firmware.md)."""
    status_every: int = 300
    lez_from: float | None = None
    state_dir: Path = Path("sim-state")
    registry: Path | None = None
    faults: FaultPlan = field(default_factory=FaultPlan)
    drain_timeout: float = 60
    """Real seconds to wait after the end of the run for node buffers to empty."""
    buffer_kb: int = 512
    reference: ReferenceStation | None = None
    """A reference station with air nodes beside it whose sensor errors are known (simulator.reference)."""
    no2_adc: str = "ads1115"
    """How air nodes read the NO2 cell: "ads1115", the kit hardware/air-kit.md documents for indicative quality,
    or "esp32", the chip's own ADC, whose nonlinearity adds a temperature-dependent offset of several µg/m³
    that calibration cannot fully remove (see docs/firmware.md)."""


@dataclass
class NodeStats:
    index: int
    device: str
    kit: str
    zone: str
    expected: int = 0
    """Readings this node must take in the run (simulator.expected), known before it starts."""
    produced: int = 0
    sent: int = 0
    buffered: int = 0
    dropped: int = 0
    boots: int = 0
    connected: bool = False
    synced: bool = False
    last_err: str = ""


@dataclass
class VirtualNode:
    stats: NodeStats
    board: SimBoard
    site: Site
    relays: list[Relay] = field(default_factory=list)
    """One per broker, in the node's own order (the first is where it starts)."""
    node: knode_node.Node | None = None
    task: asyncio.Task[None] | None = None
    offline: list[Window] = field(default_factory=list)
    reboot_at: list[float] = field(default_factory=list)
    """Power cuts, simulated seconds from the fleet's start."""
    spans: list[expect.Span] = field(default_factory=list)
    """Planned boots (power-on, power-off), simulated microseconds: the schedule the run follows."""
    expected: expect.Expected = field(default_factory=expect.Expected)


def parse_broker(url: str) -> tuple[str, int]:
    u = urllib.parse.urlparse(url if "://" in url else "mqtt://" + url)
    if u.scheme not in ("mqtt", "tcp") or not u.hostname:
        raise ValueError(f"broker URL must look like mqtt://127.0.0.1:1883, not {url!r}")
    return u.hostname, u.port or 1883


def device_id(seed: int, index: int) -> str:
    return f"{random.Random(f'{seed}/{index}').getrandbits(32) | 0x01000000:08x}"


class Fleet:
    def __init__(self, cfg: FleetConfig, on_tick: Callable[[Fleet], None] | None = None,
                 on_boot: Callable[[VirtualNode], None] | None = None) -> None:
        """on_tick: called about 20 times a real second (progress display).
        on_boot: called with each node after its firmware object is created, before it runs.

        Raises ValueError for a run whose readings could not be counted exactly (simulator.expected)."""
        expect.check_period(cfg.period)
        if cfg.sample <= 0 or cfg.period % cfg.sample:
            raise ValueError(f"sample {cfg.sample} s must divide period {cfg.period} s")
        if cfg.duration < 2 * cfg.period:
            raise ValueError(f"duration {cfg.duration:g} s: simulate at least two periods ({2 * cfg.period} s)")
        self.cfg = cfg
        self.on_tick = on_tick
        self.on_boot = on_boot
        self.brokers = [parse_broker(u) for u in (cfg.brokers or [cfg.broker])]
        if cfg.start is not None:
            start = cfg.start
        else:
            start = (time.time() - cfg.duration) // cfg.period * cfg.period
        self.start = start
        self.end = start + cfg.duration
        self.start_us = to_us(start)
        self.end_us = to_us(self.end)
        self.power_on_us = expect.first_power_on(self.start_us, cfg.period)
        self.clock = VirtualClock(self.power_on_us / US, cfg.speedup)
        self.broker_down = False
        self.nodes: list[VirtualNode] = []
        self.passwords: dict[str, str] = {}
        """Device id -> its broker secret (a broker with accounts, such as a secured cluster); default none."""
        self.colocated: list[int] = []
        """Indices of the nodes beside the reference station, in the order of cfg.reference.sensors."""
        self.phase = "running"
        self.run_wall: float | None = None
        """Real seconds from the first power-on to the end of the run (the drain after it not included)."""
        self._build()
        self._plan()

    def _build(self) -> None:
        c = self.cfg
        rng = random.Random(c.seed)
        kits = ["air"] * c.air + ["traffic"] * c.traffic
        rng.shuffle(kits)
        lon0, lat0, lon1, lat1 = CITY_BBOX
        for i, kit in enumerate(kits):
            # every other node in the LEZ core, the rest across the city: both zones well populated
            while True:
                lon, lat = round(rng.uniform(lon0, lon1), 5), round(rng.uniform(lat0, lat1), 5)
                if inside(lon, lat) == (i % 2 == 0):
                    break
            lez = inside(lon, lat)
            site = Site(lat, lon, lez, busy=rng.uniform(0.6, 1.6), lez_from=c.lez_from)
            sensed: Site | SensedSite = site
            ref = c.reference
            if ref is not None and kit == "air" and len(self.colocated) < len(ref.sensors):
                lez = inside(ref.lon, ref.lat)
                site = Site(ref.lat, ref.lon, lez, busy=ref.busy, lez_from=c.lez_from)
                sensed = SensedSite(site, ref.sensors[len(self.colocated)])
                self.colocated.append(i)
            dev = device_id(c.seed, i)
            stats = NodeStats(i, dev, kit, "lez" if lez else "outside")
            board = SimBoard(i, c.state_dir / dev, self.clock, sensed, kit, rng.getrandbits(32), Faults(),  # type: ignore[arg-type]
                             pins=self._pins(kit))
            self.nodes.append(VirtualNode(stats, board, site))
        f = c.faults
        order = list(range(len(self.nodes)))
        rng.shuffle(order)
        cycle = itertools.cycle(order)

        def pick(n: int, avoid: set[int], what: str) -> list[int]:
            """Up to n distinct nodes, next in the shuffled order, skipping those whose faults would not mix."""
            out: list[int] = []
            for _ in range(min(n, len(order) - len(avoid))):
                i = next(cycle)
                while i in avoid or i in out:
                    i = next(cycle)
                out.append(i)
            if len(out) < n and len(out) < len(order):
                raise ValueError(f"{what}: not enough nodes without conflicting faults; use fewer faults or more nodes")
            return out

        wifi = pick(f.wifi_drop_nodes, set(), "Wi-Fi drops")
        for i in wifi:
            at = rng.uniform(0.1, 0.6) * c.duration
            self.nodes[i].offline.append((at, f.wifi_drop_s))
        # a node powered on without Wi-Fi sets its clock when its link happens to retry: not countable
        rebooted = pick(f.reboot_nodes, set(wifi), "power cuts")
        for i in rebooted:
            self.nodes[i].reboot_at.append(rng.uniform(0.2, 0.8) * c.duration)
        # two boots of a node that never syncs restart its 2000-based clock: same timestamps twice
        for i in pick(f.never_sync_nodes, set(rebooted), "never-sync nodes"):
            self.nodes[i].board.faults.never_sync = True
        for i in pick(f.broken_sensor_nodes, set(), "broken sensors"):
            self.nodes[i].board.faults.broken_sensor = True
        for idx, wins in f.offline.items():
            self.nodes[idx].offline.extend(wins)

    def _plan(self) -> None:
        """Each node's boots and the readings they must take, before anything runs."""
        p_us = self.cfg.period * US
        for vn in self.nodes:
            syncs = not vn.board.faults.never_sync
            cuts = []
            for at in sorted(vn.reboot_at):
                # a cut needs two periods after a power-on and more than three before the end (see expected)
                on = self.power_on_us if not cuts else expect.power_on_after(cuts[-1], self.cfg.period)
                lo, hi = on + 2 * p_us, self.end_us - 3 * p_us - 1
                if lo > hi:
                    raise ValueError(f"node {vn.stats.index}: no room for a power cut; simulate longer runs")
                cuts.append(min(max(self.start_us + to_us(at), lo), hi))
            vn.reboot_at = [(x - self.start_us) / US for x in cuts]
            ons = [self.power_on_us] + [expect.power_on_after(x, self.cfg.period) for x in cuts]
            offs = [*cuts, self.end_us]
            vn.spans = [expect.Span(on, off, syncs) for on, off in zip(ons, offs, strict=True)]
            for k, span in enumerate(vn.spans):
                expect.check_span(span, self.cfg.period, self.end_us, cut=k < len(cuts))
                off = span.on - self.start_us
                if syncs and span.on < self.end_us and any(to_us(a) <= off < to_us(a) + to_us(d) for a, d in vn.offline):
                    raise ValueError(f"node {vn.stats.index} would power on during its Wi-Fi outage")
            vn.expected = functools.reduce(lambda x, y: x + y,
                                           (expect.for_span(sp, self.cfg.period, self.end_us) for sp in vn.spans))
            vn.stats.expected = vn.expected.total

    def reference_series(self) -> list:  # type: ignore[type-arg]
        """The reference station's hourly truth over the run (simulator.reference.hourly); [] without a station."""
        from kerbside.simulator import reference

        if not self.colocated:
            return []
        return reference.hourly(self.nodes[self.colocated[0]].site, self.start, self.end, self.cfg.sample)

    def expected(self) -> expect.Expected:
        """Readings the whole fleet must take in the run: interval readings and boot readings."""
        return functools.reduce(lambda x, y: x + y, (vn.expected for vn in self.nodes), expect.Expected())

    def _node_config(self, vn: VirtualNode) -> dict:
        c = self.cfg
        s = vn.stats
        assert vn.relays
        return {"v": 1, "device": s.device, "kit": s.kit, "site": f"sim-{s.index:03d}", "zone": s.zone,
                "wifi": [{"ssid": "kerbside-sim", "psk": "simulated"}],
                "mqtt": {"host": "127.0.0.1", "port": vn.relays[0].port, "tls": False, "user": s.device,
                         "password": self.passwords.get(s.device, ""), "keepalive": 60,
                         "brokers": [["127.0.0.1", r.port] for r in vn.relays]},
                "ntp": ["pool.ntp.org"], "period": c.period, "sample": c.sample, "status_every": c.status_every,
                "credential": 1, "cfg": 1, "cal": {}, "pins": self._pins(s.kit), "buffer_kb": c.buffer_kb}

    def _pins(self, kit: str) -> dict[str, str]:
        """The same on the fake hardware and in the node's config: the fakes answer what the config wires."""
        return {"no2_adc": self.cfg.no2_adc} if kit == "air" and self.cfg.no2_adc != "esp32" else {}

    def write_registry(self, path: Path) -> None:
        from kerbside.core.registry import Device, Registry

        with Registry(path).edit() as devices:
            for vn in self.nodes:
                s = vn.stats
                devices[s.device] = Device(id=s.device, kit=s.kit, site=f"sim-{s.index:03d}", zone=s.zone,
                                           lat=vn.site.lat, lon=vn.site.lon, extra={"simulated": "true"})

    # -- running ---------------------------------------------------------------
    def _down(self, vn: VirtualNode) -> bool:
        return self.broker_down or vn.board.faults.wifi_down

    async def _run_node(self, vn: VirtualNode, power_on_us: int) -> None:
        """One boot of a node, from power-on until its power is cut (this task is cancelled).

        machine.reset() or a crash (the watchdog would reset it) boots it again at once."""
        await self.clock.sleep_until_us(power_on_us)
        while True:
            vn.board.power_on()
            vn.stats.boots += 1
            node = knode_node.Node(vn.board)
            vn.node = node
            if self.phase != "running":
                node.stop_sampling()  # powered on after the end of the run: only drains its flash
            if self.on_boot:
                self.on_boot(vn)
            try:
                await node.run()
            except Reboot:
                pass
            except Exception as e:
                vn.stats.last_err = f"crashed: {e!r}"
            finally:
                self._collect(vn, node)

    def _collect(self, vn: VirtualNode, node: knode_node.Node) -> None:
        """Fold a boot's counters into the node's totals (idempotent)."""
        vn.stats.produced += node.produced
        vn.stats.sent += node.sent
        node.produced = node.sent = 0

    def _power_cut(self, vn: VirtualNode, spans: list[expect.Span]) -> None:
        """Power off now: the firmware gets no say (its tasks are cancelled before they run again),
        and power returns at the next planned power-on."""
        for relay in vn.relays:
            relay.cut()
        if vn.task is not None:
            vn.task.cancel()
        if vn.node is not None:
            self._collect(vn, vn.node)
        vn.task = asyncio.create_task(self._run_node(vn, spans[0].on))

    def _instants(self) -> list[int]:
        """Every simulated instant at which the fault state changes, and the end of the run."""
        t = {self.end_us}
        for a, d in self.cfg.faults.broker_down:
            t.update((self.start_us + to_us(a), self.start_us + to_us(a) + to_us(d)))
        for vn in self.nodes:
            for a, d in vn.offline:
                t.update((self.start_us + to_us(a), self.start_us + to_us(a) + to_us(d)))
            t.update(sp.off for sp in vn.spans[:-1])
        return sorted(x for x in t if x <= self.end_us)

    def _apply_faults(self, t_us: int) -> None:
        off = t_us - self.start_us
        was = self.broker_down
        self.broker_down = any(to_us(a) <= off < to_us(a) + to_us(d) for a, d in self.cfg.faults.broker_down)
        for vn in self.nodes:
            down = any(to_us(a) <= off < to_us(a) + to_us(d) for a, d in vn.offline)
            if (down and not vn.board.faults.wifi_down) or (self.broker_down and not was):
                for relay in vn.relays:
                    relay.cut()
            vn.board.faults.wifi_down = down
            for k, sp in enumerate(vn.spans[:-1]):
                if sp.off == t_us:
                    self._power_cut(vn, vn.spans[k + 1:])

    async def _control(self) -> None:
        """The fault schedule, then the end: each acted on at its simulated instant, after the nodes."""
        for t in self._instants():
            await self.clock.sleep_until_us(t, last=True)
            if t < self.end_us:
                self._apply_faults(t)
        # every interval that ended by now is stored (its sampler ran first); none after
        self.phase = "draining"
        for vn in self.nodes:
            if vn.node is not None:
                vn.node.stop_sampling()  # the link drains; the interval under way is never stored
            vn.board.faults.wifi_down = False
        self.broker_down = False

    def snapshot(self) -> list[NodeStats]:
        for vn in self.nodes:
            n = vn.node
            s = vn.stats
            if n is not None:
                s.buffered = len(n.store)
                s.dropped = n.store.drops
                s.connected = n.client is not None and n.client.connected
                s.synced = n.synced
                s.last_err = n.last_err or s.last_err
        return [vn.stats for vn in self.nodes]

    def totals(self) -> dict[str, int]:
        snap = self.snapshot()
        live = [vn.node for vn in self.nodes if vn.node is not None]
        return {"nodes": len(snap),
                "expected": sum(s.expected for s in snap),
                "produced": sum(s.produced for s in snap) + sum(n.produced for n in live),
                "sent": sum(s.sent for s in snap) + sum(n.sent for n in live),
                "buffered": sum(s.buffered for s in snap),
                "dropped": sum(s.dropped for s in snap),
                "connected": sum(s.connected for s in snap)}

    def progress(self) -> float:
        """Fraction of the run's simulated time done, 0..1."""
        return min(1.0, max(0.0, (self.clock.now() - self.start) / (self.end - self.start)))

    async def _ticker(self) -> None:
        while self.on_tick is not None:
            self.on_tick(self)
            await asyncio.sleep(0.05)

    async def run(self) -> list[NodeStats]:
        c = self.cfg
        c.state_dir.mkdir(parents=True, exist_ok=True)
        if c.registry is not None:
            self.write_registry(c.registry)
        for vn in self.nodes:
            n = len(self.brokers)
            order = [self.brokers[(vn.stats.index + k) % n] for k in range(n)]  # node i starts at broker i mod n
            vn.relays = [await Relay(*b, is_down=functools.partial(self._down, vn)).start() for b in order]
            vn.board.root = str(c.state_dir / vn.stats.device)
            Path(vn.board.root).mkdir(parents=True, exist_ok=True)
            (Path(vn.board.root) / "config.json").write_text(json.dumps(self._node_config(vn)))
        self.clock.attach()  # paced from now; every task created from here on is waited for
        for vn in self.nodes:
            vn.task = asyncio.create_task(self._run_node(vn, vn.spans[0].on))
        ticker = asyncio.create_task(self._ticker())
        t0 = time.monotonic()
        try:
            await self._control()
            self.run_wall = time.monotonic() - t0
            deadline = time.monotonic() + c.drain_timeout
            while time.monotonic() < deadline and self.totals()["buffered"]:
                await asyncio.sleep(0.05)
        finally:
            self.phase = "done"
            ticker.cancel()
            for vn in self.nodes:
                if vn.task is not None:
                    vn.task.cancel()
            await asyncio.gather(ticker, *(vn.task for vn in self.nodes if vn.task), return_exceptions=True)
            snap = self.snapshot()
            for vn in self.nodes:
                for relay in vn.relays:
                    with contextlib.suppress(Exception):
                        await relay.stop()
            if self.on_tick:
                self.on_tick(self)
        return snap


def run_fleet(**kw: object) -> list[NodeStats]:
    """Blocking convenience for scripts: run_fleet(broker=..., air=2, traffic=1, duration=3600, speedup=600)."""
    faults = kw.pop("faults", None)
    cfg = FleetConfig(**kw)  # type: ignore[arg-type]
    if isinstance(faults, FaultPlan):
        cfg.faults = faults
    return asyncio.run(Fleet(cfg).run())
