"""`kerbside demo`: the whole system on one machine, in a few minutes.

Real Mosquitto and InfluxDB on loopback, the real collector as a service
process, a simulated fleet running the real firmware around a Low Emission
Zone, a broker outage and a node outage injected, then the LEZ report. It is
what `make demo` runs, and the first thing a city evaluating kerbside sees, so
it narrates what happens and ends with how to look at the data yourself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.table import Table

from kerbside.core.settings import Config, child_env
from kerbside.devstack import LOOPBACK, CollectorProcess, Influxd, Mosquitto, free_port

DB = "kerbside"


@dataclass
class DemoPlan:
    state: Path
    out: Path
    air: int = 40
    traffic: int = 10
    days: float = 7.0
    speedup: float = 3000.0
    seed: int = 7
    outage_at: float = 0.45
    """Fraction of the run after which the broker is stopped."""
    outage_s: float = 20.0
    """Wall-clock seconds the broker stays down (at most a fifth of the run)."""
    keep: bool = False
    end: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0))

    @property
    def start(self) -> dt.datetime:
        return self.end - dt.timedelta(days=self.days)

    @property
    def lez_from(self) -> dt.datetime:
        return (self.start + dt.timedelta(days=self.days / 2)).replace(hour=0)

    @property
    def wall_s(self) -> float:
        return self.days * 86400 / self.speedup


class Demo:
    """Owns every process of the demo, so Ctrl-C (or any error) stops them all."""

    def __init__(self, plan: DemoPlan) -> None:
        self.plan = plan
        self.broker = Mosquitto("mosquitto", plan.state / "mosquitto", free_port())
        self.influxd = Influxd("influxd", plan.state / "influxd", free_port(), cq_interval="10s")
        self.registry = plan.state / "registry.json"
        self.settings = Config()
        """What the demo's kerbside commands use, whatever settings file or KERBSIDE_* variables the user has."""
        s = self.settings
        s.mqtt.url, s.mqtt.client_id = self.broker.url, "kerbside-demo-collector"
        s.influx.url, s.influx.db, s.influx.unsynced_rp = self.influxd.url, DB, "unsynced"
        s.spool.dir, s.registry.path = str(plan.state / "collector" / "spool"), str(self.registry)
        self.collector = CollectorProcess("collector", plan.state, 0, settings=self.settings)
        """Its /metrics port is chosen when it starts (collector.port)."""
        self.simulating = threading.Event()
        self.events: list[str] = []

    # --- processes ---------------------------------------------------------------
    def kerbside(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "kerbside", *args]

    def start_collector(self) -> None:
        self.collector.start(timeout=30)

    def metrics(self) -> dict[str, float] | None:
        return self.collector.metrics()

    def readings_in_influx(self) -> int:
        """Distinct readings stored: one air point, or one inbound traffic_flow point, per reading."""
        from kerbside.core.influx import InfluxClient

        total = 0
        with InfluxClient(self.influxd.url, DB, timeout=30) as influx:
            for q in ('SELECT count("seq") FROM "air"', 'SELECT count("seq") FROM "traffic_flow" WHERE "direction" = \'in\'',
                      'SELECT count("seq") FROM "unsynced"."air_unsynced"',
                      'SELECT count("seq") FROM "unsynced"."traffic_flow_unsynced" WHERE "direction" = \'in\''):
                series = influx.query(q)
                total += int(series[0]["values"][0][1]) if series else 0
        return total

    def stop(self) -> None:
        self.collector.stop(timeout=30)
        self.broker.stop()
        self.influxd.stop()

    def outage(self, delay_s: float) -> None:
        """Stop the real broker for a while mid-run: nodes buffer, the collector reconnects."""
        time.sleep(delay_s)
        if not self.simulating.is_set():
            return
        down = min(self.plan.outage_s, self.plan.wall_s / 5)
        self.events.append(f"broker stopped for {down:.0f} s (nodes buffer on flash)")
        self.broker.stop()
        time.sleep(down)
        self.broker.start()
        self.events.append("broker back: nodes drain their backlogs, the collector's session resumes")


def _fleet(demo: Demo):  # type: ignore[no-untyped-def]
    from kerbside.simulator.fleet import FaultPlan, Fleet, FleetConfig

    p = demo.plan
    faults = FaultPlan(wifi_drop_nodes=2, wifi_drop_s=12 * 3600, reboot_nodes=2, never_sync_nodes=1, broken_sensor_nodes=1)
    cfg = FleetConfig(broker=demo.broker.url, air=p.air, traffic=p.traffic, seed=p.seed, start=p.start.timestamp(),
                      duration=p.days * 86400, speedup=p.speedup, lez_from=p.lez_from.timestamp(),
                      state_dir=p.state / "fleet", registry=demo.registry, faults=faults, drain_timeout=120)
    return Fleet(cfg)


def _view(demo: Demo, fleet, rate: float, t0: float) -> Table:  # type: ignore[no-untyped-def]
    m = demo.metrics() or {}
    tot = fleet.totals()
    sim_now = dt.datetime.fromtimestamp(min(max(fleet.clock.now(), fleet.start), fleet.end), dt.UTC)
    done = fleet.progress()
    t = Table(title=f"kerbside demo  [dim]{time.monotonic() - t0:5.0f} s[/]", show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    lag = fleet.clock.lag()
    slow = f"  [yellow]host busy: simulated time {lag:.0f} s behind x{fleet.cfg.speedup:g}, no reading skipped[/]" \
        if lag >= 2 and fleet.phase == "running" else ""
    t.add_row("simulated time", f"{sim_now:%a %d %b %H:%M} UTC  {'█' * int(done * 30):<30} {done:4.0%}{slow}")
    broker = "up" if demo.broker.running() else "[red]DOWN[/]"
    t.add_row("nodes online", f"{tot['connected']} / {tot['nodes']}  (broker {broker})")
    stored = int(m.get("kerbside_readings_total", 0) - m.get("kerbside_duplicates_total", 0))  # redeliveries overwrite
    t.add_row("readings", f"{tot['produced']:,} taken of {tot['expected']:,} expected · {stored:,} stored · {rate:,.0f}/s")
    t.add_row("node flash buffers", f"{tot['buffered']:,} readings waiting · {tot['dropped']:,} dropped")
    t.add_row("collector spool", f"{int(m.get('kerbside_spool_bytes', 0)):,} B")
    t.add_row("gaps", f"{int(m.get('kerbside_gaps_open', 0))} open, {int(m.get('kerbside_readings_missing', 0)):,} readings "
                      f"missing · {int(m.get('kerbside_gaps_opened_total', 0))} seen")
    t.add_row("rejected", f"{int(m.get('kerbside_rejected_total', 0)):,} (dead-letter store)")
    for e in demo.events[-3:]:
        t.add_row("", f"[yellow]{e}[/]")
    return t


def run(plan: DemoPlan) -> int:
    import asyncio
    import json

    from rich.console import Console
    from rich.live import Live

    con = Console()
    demo = Demo(plan)
    t0 = time.monotonic()
    stopping = _stop_on_signals()
    try:
        with con.status("starting InfluxDB and Mosquitto on loopback…"):
            demo.influxd.start()
            demo.broker.start()
        # their ports are final only now (a port taken by another process is replaced at start)
        demo.settings.mqtt.url, demo.settings.influx.url = demo.broker.url, demo.influxd.url
        con.print(f"[green]✓[/] InfluxDB {demo.influxd.url}   Mosquitto {demo.broker.url}   (state in {plan.state})")
        env = child_env(demo.settings)
        subprocess.run(demo.kerbside("db", "init"), env=env, check=True, stdout=subprocess.DEVNULL)
        con.print("[green]✓[/] database initialised: retention policies and hourly continuous queries")
        try:
            fleet = _fleet(demo)
        except ValueError as e:
            con.print(f"[bold red]cannot simulate this run:[/] {e}")
            return 2
        fleet.write_registry(demo.registry)
        demo.start_collector()
        con.print(f"[green]✓[/] collector running: fleet page http://{LOOPBACK}:{demo.collector.port}/fleet, "
                  f"metrics http://{LOOPBACK}:{demo.collector.port}/metrics")
        con.print(f"simulating {plan.days:g} days of {plan.air} air-quality and {plan.traffic} traffic nodes "
                  f"({plan.start:%d %b} → {plan.end:%d %b}, LEZ from {plan.lez_from:%d %b}), "
                  f"~{plan.wall_s / 60:.1f} min; a broker outage and node outages are injected")
        threading.Thread(target=demo.outage, args=(plan.wall_s * plan.outage_at,), daemon=True).start()
        last = [time.monotonic(), 0.0, 0.0]

        with Live(console=con, refresh_per_second=4) as live:
            def tick(f) -> None:  # type: ignore[no-untyped-def]
                now = time.monotonic()
                if now - last[0] < 0.5:
                    return
                stored = (demo.metrics() or {}).get("kerbside_readings_total", last[1])
                last[2] = (stored - last[1]) / (now - last[0])
                last[0], last[1] = now, stored
                live.update(_view(demo, f, last[2], t0))

            fleet.on_tick = tick
            demo.simulating.set()
            try:
                stats = asyncio.run(fleet.run())
            finally:
                demo.simulating.clear()
            produced = sum(s.produced for s in stats)
            held = _drain(demo, produced)
            live.update(_view(demo, fleet, 0.0, t0))
        con.print()
        if fleet.run_wall is not None:
            pace = fleet.cfg.duration / fleet.run_wall
            busy = "" if pace >= 0.95 * plan.speedup else \
                f" (the host was too busy for x{plan.speedup:g}: simulated time waited for the nodes)"
            con.print(f"[green]✓[/] simulated {plan.days:g} days in {fleet.run_wall:.0f} s, x{pace:,.0f}{busy}")
        exact = _accounting(con, demo, fleet.expected(), stats, held)
        with con.status("computing hourly aggregates for the simulated period…"):
            subprocess.run(demo.kerbside("db", "backfill", "--from", f"{plan.start:%Y-%m-%d}", "--to", f"{plan.end:%Y-%m-%d}"),
                           env=env, check=True, stdout=subprocess.DEVNULL)
        with con.status("writing the LEZ report…"):
            day = f"{plan.lez_from:%Y-%m-%d}"
            rep = subprocess.run(demo.kerbside("report", "lez", "--zone", "lez", "--before", day, "--after", day,
                                               "--out", str(plan.out), "--bootstrap", "500"),
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if rep.returncode == 0:
            _headlines(con, demo, plan, json.loads((plan.out / "summary.json").read_text()))
        else:
            why = [ln for ln in rep.stderr.strip().splitlines() if ln.strip()]
            con.print(f"[yellow]LEZ report not written:[/] {why[-1] if why else 'the report command failed'}")
        _queries(con, demo, plan, fleet)
        if not exact:
            con.print("\n[bold red]✗ readings expected, taken and stored differ (see above)[/]")
        if plan.keep:
            con.print(f"\nInfluxDB, Mosquitto and the collector stay up for you to explore (the fleet page: "
                      f"http://{LOOPBACK}:{demo.collector.port}/fleet). [bold]Ctrl-C[/] (or SIGTERM) stops everything.")
            while True:
                time.sleep(3600)
        return 0 if exact else 1
    except KeyboardInterrupt:
        con.print(f"\nstopping ({stopping.get('signal', 'Ctrl-C')})…")
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        demo.stop()


def _stop_on_signals() -> dict[str, str]:
    """SIGTERM and SIGHUP stop the demo like Ctrl-C: the services run in sessions of their own (so a Ctrl-C in
    the terminal reaches only the demo), so only the demo's own cleanup stops them, and it must run."""
    seen: dict[str, str] = {}

    def handler(signum: int, frame: object) -> None:
        seen["signal"] = signal.Signals(signum).name
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    return seen


def _accounting(con, demo: Demo, expected, stats, stored: int) -> bool:  # type: ignore[no-untyped-def]
    """Readings expected (from the fleet's schedule, simulator.expected), taken (counted by the nodes) and
    stored (distinct readings in InfluxDB): print them, and say loudly where they differ. True if all equal."""
    taken = sum(s.produced for s in stats)
    m = demo.metrics() or {}
    line = (f"readings: {expected.total:,} expected ({expected.intervals:,} intervals + {expected.boots:,} boot readings), "
            f"{taken:,} taken, {stored:,} stored")
    if expected.total == taken == stored:
        con.print(f"[green]✓ {line}: every reading due was taken and stored[/] "
                  f"({int(m.get('kerbside_duplicates_total', 0)):,} redelivered duplicates overwrote themselves; "
                  f"{int(m.get('kerbside_gaps_open', 0))} gaps open)")
        return True
    con.print(f"[bold red]✗ {line}[/]")
    short = [s for s in stats if s.produced != s.expected]
    if short:
        con.print(f"[red]  {len(short)} node(s) did not take the readings they were due: "
                  + ", ".join(f"{s.device} {s.produced:,} of {s.expected:,}" for s in short[:5]) + "[/]")
    if stored < taken:
        on_flash, dropped = sum(s.buffered for s in stats), sum(s.dropped for s in stats)
        con.print(f"[red]  {taken - stored:,} taken but not in InfluxDB: {on_flash:,} still on node flash, "
                  f"{dropped:,} dropped by full node buffers; the collector's log is in {demo.plan.state}[/]")
    elif stored > taken:
        con.print(f"[red]  InfluxDB holds {stored - taken:,} readings more than the nodes took[/]")
    return False


def _drain(demo: Demo, produced: int, timeout: float = 180) -> int:
    """Wait until InfluxDB holds every reading the nodes took, or nothing more arrives; returns what it holds.

    After the broker outage the collector may still be in its reconnect back-off while the broker queues
    for its persistent session, so "the collector is idle" is not enough: count what is stored.
    """
    deadline = time.monotonic() + timeout
    held, last_change, last = 0, time.monotonic(), -1
    while time.monotonic() < deadline:
        held = demo.readings_in_influx()
        m = demo.metrics() or {}
        if held >= produced and not m.get("kerbside_unacked_messages", 0):
            return held
        if held != last:
            last, last_change = held, time.monotonic()
        elif time.monotonic() - last_change > 45 and m.get("kerbside_mqtt_connected") == 1:
            return held  # connected and nothing new for 45 s: report what is there
        time.sleep(0.5)
    return held


def _headlines(con, demo: Demo, plan: DemoPlan, summary: dict) -> None:  # type: ignore[no-untyped-def]
    con.print(f"\n[bold]LEZ report:[/] {plan.out / 'report.html'}")
    t = Table(show_header=True, box=None)
    for col in ("", "estimate", "95 % interval", "days before/after"):
        t.add_column(col)
    for pol, r in sorted(summary.get("did", {}).items(), key=lambda kv: ("no2", "pm25", "pm10").index(kv[0])):
        t.add_row(f"LEZ effect on {pol} (difference-in-differences, µg/m³)", f"{r['estimate']:+.1f}",
                  f"{r['ci_low']:+.1f} … {r['ci_high']:+.1f}", f"{r['days_before']}/{r['days_after']}")
    if summary.get("did"):
        con.print(t)
    for m in summary.get("missing", []):
        con.print(f"  [yellow]not in the report:[/] {m}")
    partial = summary.get("partial_days", {})
    if partial:
        con.print(f"  partial days left out of the comparison: {', '.join(f'{d} ({why})' for d, why in partial.items())}")
    for key, v in summary.get("traffic", {}).items():
        con.print(f"  traffic {key}: {v['vehicles_per_day']:,.0f} vehicles/day per counter, "
                  f"{v['heavy_share_pct']:.1f} % heavy (compared on {v['compared']})")
    gaps = summary.get("gaps", {})
    con.print(f"  sequence gaps recorded: {gaps.get('count', 0)}, readings still missing: {gaps.get('still_missing', 0)}")


def _queries(con, demo: Demo, plan: DemoPlan, fleet) -> None:  # type: ignore[no-untyped-def]
    """The guide's recipes filled in with this run's port, database, days and a site (analysis.recipes)."""
    from kerbside.analysis import recipes
    from kerbside.analysis.timerange import LocalRange, zone

    tz = demo.settings.analysis.tz
    first, last = plan.start.astimezone(zone(tz)).date(), plan.end.astimezone(zone(tz)).date()
    after = plan.lez_from.astimezone(zone(tz)).date()
    site = next((f"sim-{vn.stats.index:03d}" for vn in fleet.nodes if vn.stats.kit == "air"), "sim-000")
    vals = recipes.values(demo.influxd.url, DB, LocalRange(first, last, tz), site, "lez", after, str(demo.registry))
    con.print("\n[bold]Query the data yourself[/] (docs/analysts.md, filled in for this run):")
    for r in (recipes.RECIPES[0], recipes.RECIPES[3], recipes.RECIPES[5]):
        con.print(f"  [dim]# {r.title}[/]")
        con.print("  " + recipes.shell(recipes.fill(r, vals), vals), soft_wrap=True, highlight=False, markup=False)
    con.print("  [dim]# every recipe, and the Python API:[/]")
    con.print(f"  kerbside recipes --influx {demo.influxd.url} --db {DB} --registry {demo.registry} --after {after}",
              soft_wrap=True, highlight=False, markup=False)
    con.print("  [dim]# the notebook that runs the guide end to end (docs/analysts.ipynb):[/]")
    con.print(f"  KERBSIDE_INFLUX_URL={demo.influxd.url} KERBSIDE_INFLUX_DB={DB} KERBSIDE_REGISTRY_PATH={demo.registry} "
              f"LEZ_START={after} jupyter lab docs/analysts.ipynb", soft_wrap=True, highlight=False, markup=False)
    con.print(f"Logs and state: {plan.state}")


def demo_cmd(
    out: str = typer.Option("demo-out", "--out", help="Where the LEZ report goes."),
    state: str = typer.Option("state/demo", "--state", help="Working directory for brokers, spool and logs (wiped)."),
    days: float = typer.Option(7.0, "--days", help="Simulated days."),
    air: int = typer.Option(40, "--air", help="Air-quality nodes."),
    traffic: int = typer.Option(10, "--traffic", help="Traffic nodes."),
    speedup: float = typer.Option(3000.0, "--speedup", help="Simulated seconds per wall-clock second, at most "
                                  "(a busy host slows the run, never skips a reading)."),
    keep: bool = typer.Option(None, "--keep/--no-keep", help="Keep InfluxDB running for queries until Ctrl-C "
                              "(default: when run from a terminal)."),
) -> None:
    """Run brokers, the collector and a simulated fleet around a Low Emission Zone, then print the results."""
    state_dir = Path(state).resolve()
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    plan = DemoPlan(state_dir, Path(out).resolve(), air, traffic, days, speedup,
                    keep=sys.stdin.isatty() if keep is None else keep)
    with contextlib.suppress(KeyboardInterrupt):
        raise typer.Exit(run(plan))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)

