"""Run many virtual nodes, each executing the real firmware (knode.node.Node), in one asyncio loop.

    summary = asyncio.run(Fleet(FleetConfig(broker="mqtt://127.0.0.1:1883", air=3, traffic=2,
                                            duration=86400, speedup=2000)).run())

Each node has its own flash directory (ring buffer, config), its own fake
hardware (simulator.hardware.SimBoard) and its own TCP relay to the broker
(simulator.proxy.Relay) through which Wi-Fi drops and broker outages are
injected. Time is virtual (simulator.clock.VirtualClock).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kerbside.simulator.city import CITY_BBOX, Site, inside
from kerbside.simulator.clock import VirtualClock
from kerbside.simulator.hardware import Faults, Reboot, SimBoard
from kerbside.simulator.proxy import Relay
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
    air: int = 3
    traffic: int = 2
    seed: int = 1
    start: float | None = None
    """Simulated unix start time; default: now minus duration (the data end now)."""
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
    """Real seconds to wait at the end for buffers to empty."""
    buffer_kb: int = 512


@dataclass
class NodeStats:
    index: int
    device: str
    kit: str
    zone: str
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
    relay: Relay | None = None
    node: knode_node.Node | None = None
    task: asyncio.Task[None] | None = None
    offline: list[Window] = field(default_factory=list)
    reboot_at: list[float] = field(default_factory=list)
    power_cut: asyncio.Event = field(default_factory=asyncio.Event)


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
        on_boot: called with each node after its firmware object is created, before it runs."""
        self.cfg = cfg
        self.on_tick = on_tick
        self.on_boot = on_boot
        self.broker = parse_broker(cfg.broker)
        start = cfg.start if cfg.start is not None else time.time() - cfg.duration
        self.start = start
        self.end = start + cfg.duration
        self.clock = VirtualClock(start, cfg.speedup)
        self.broker_down = False
        self.nodes: list[VirtualNode] = []
        self.phase = "running"
        self._build()

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
            dev = device_id(c.seed, i)
            stats = NodeStats(i, dev, kit, "lez" if lez else "outside")
            board = SimBoard(i, c.state_dir / dev, self.clock, site, kit, rng.getrandbits(32), Faults())
            self.nodes.append(VirtualNode(stats, board, site))
        f = c.faults
        order = list(range(len(self.nodes)))
        rng.shuffle(order)
        pick = iter(order * 4)
        for _ in range(min(f.wifi_drop_nodes, len(order))):
            vn = self.nodes[next(pick)]
            at = rng.uniform(0.1, 0.6) * c.duration
            vn.offline.append((at, f.wifi_drop_s))
        for _ in range(min(f.reboot_nodes, len(order))):
            self.nodes[next(pick)].reboot_at.append(rng.uniform(0.2, 0.8) * c.duration)
        for _ in range(min(f.never_sync_nodes, len(order))):
            self.nodes[next(pick)].board.faults.never_sync = True
        for _ in range(min(f.broken_sensor_nodes, len(order))):
            self.nodes[next(pick)].board.faults.broken_sensor = True
        for idx, wins in f.offline.items():
            self.nodes[idx].offline.extend(wins)

    def _node_config(self, vn: VirtualNode) -> dict:
        c = self.cfg
        s = vn.stats
        assert vn.relay is not None
        return {"v": 1, "device": s.device, "kit": s.kit, "site": f"sim-{s.index:03d}", "zone": s.zone,
                "wifi": [{"ssid": "kerbside-sim", "psk": "simulated"}],
                "mqtt": {"host": "127.0.0.1", "port": vn.relay.port, "tls": False, "user": s.device,
                         "password": "", "keepalive": 60},
                "ntp": ["pool.ntp.org"], "period": c.period, "sample": c.sample, "status_every": c.status_every,
                "credential": 1, "cfg": 1, "cal": {}, "pins": {}, "buffer_kb": c.buffer_kb}

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

    async def _run_node(self, vn: VirtualNode) -> None:
        """Boot the node again and again: after machine.reset(), a crash (the watchdog) or a power cut."""
        while True:
            vn.board.power_on()
            vn.stats.boots += 1
            node = knode_node.Node(vn.board)
            vn.node = node
            if self.on_boot:
                self.on_boot(vn)
            run = asyncio.create_task(node.run())
            cut = asyncio.create_task(vn.power_cut.wait())
            try:
                await asyncio.wait({run, cut}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                cut.cancel()
                if not run.done():
                    run.cancel()  # power cut (or the fleet stopping): the firmware gets no say
                await asyncio.gather(run, return_exceptions=True)
                self._collect(vn, node)
            vn.power_cut.clear()
            if not run.cancelled() and isinstance(run.exception(), Exception) and not isinstance(run.exception(), Reboot):
                vn.stats.last_err = f"crashed: {run.exception()!r}"  # the watchdog would reset it: boot again

    def _collect(self, vn: VirtualNode, node: knode_node.Node) -> None:
        """Fold a finished boot's counters into the node's totals."""
        vn.stats.produced += node.produced
        vn.stats.sent += node.sent
        node.produced = node.sent = 0

    def _power_cut(self, vn: VirtualNode) -> None:
        if vn.relay is not None:
            vn.relay.cut()
        vn.power_cut.set()

    def _apply_faults(self) -> None:
        off = self.clock.now() - self.start
        self.broker_down = any(a <= off < a + d for a, d in self.cfg.faults.broker_down)
        for vn in self.nodes:
            down = any(a <= off < a + d for a, d in vn.offline)
            was = vn.board.faults.wifi_down
            vn.board.faults.wifi_down = down
            if (down and not was) or self.broker_down:
                assert vn.relay is not None
                vn.relay.cut()
            while vn.reboot_at and off >= vn.reboot_at[0]:
                vn.reboot_at.pop(0)
                self._power_cut(vn)

    def snapshot(self) -> list[NodeStats]:
        for vn in self.nodes:
            n = vn.node
            s = vn.stats
            if n is not None:
                s.buffered = len(n.store)
                s.dropped = n.store.drops
                s.connected = n.client is not None and n.client.connected
                s.synced = n.synced
                s.last_err = n.last_err
        return [vn.stats for vn in self.nodes]

    def totals(self) -> dict[str, int]:
        snap = self.snapshot()
        live = [vn.node for vn in self.nodes if vn.node is not None]
        return {"nodes": len(snap),
                "produced": sum(s.produced for s in snap) + sum(n.produced for n in live),
                "sent": sum(s.sent for s in snap) + sum(n.sent for n in live),
                "buffered": sum(s.buffered for s in snap),
                "dropped": sum(s.dropped for s in snap),
                "connected": sum(s.connected for s in snap)}

    async def run(self) -> list[NodeStats]:
        c = self.cfg
        c.state_dir.mkdir(parents=True, exist_ok=True)
        if c.registry is not None:
            self.write_registry(c.registry)
        for vn in self.nodes:
            vn.relay = await Relay(*self.broker, is_down=functools.partial(self._down, vn)).start()
            vn.board.root = str(c.state_dir / vn.stats.device)
            Path(vn.board.root).mkdir(parents=True, exist_ok=True)
            (Path(vn.board.root) / "config.json").write_text(json.dumps(self._node_config(vn)))
        self.clock = VirtualClock(self.start, c.speedup)  # time starts now, not at construction
        for vn in self.nodes:
            vn.board.clock = self.clock
            vn.task = asyncio.create_task(self._run_node(vn))
        try:
            while self.clock.now() < self.end:
                self._apply_faults()
                if self.on_tick:
                    self.on_tick(self)
                await asyncio.sleep(0.05)
            self.phase = "draining"
            for vn in self.nodes:
                if vn.node is not None:
                    vn.node.stop_sampling()  # no new readings after the end; the link drains
                vn.reboot_at.clear()
                vn.board.faults.wifi_down = False
            self.broker_down = False
            deadline = time.monotonic() + c.drain_timeout
            while time.monotonic() < deadline and self.totals()["buffered"]:
                if self.on_tick:
                    self.on_tick(self)
                await asyncio.sleep(0.05)
        finally:
            self.phase = "done"
            for vn in self.nodes:
                if vn.task is not None:
                    vn.task.cancel()
            await asyncio.gather(*(vn.task for vn in self.nodes if vn.task), return_exceptions=True)
            snap = self.snapshot()
            for vn in self.nodes:
                with contextlib.suppress(Exception):
                    if vn.relay is not None:
                        await vn.relay.stop()
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
