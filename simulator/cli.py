"""`kerbside simulate`: a virtual fleet running the real node firmware against a real broker."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import typer


def _when(text: str) -> float:
    try:
        d = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO date like 2026-03-01 or 2026-03-01T06:00") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.timestamp()


def _windows(spec: str) -> list[tuple[float, float]]:
    out = []
    for part in filter(None, spec.split(",")):
        try:
            a, b = part.split("+")
            out.append((float(a), float(b)))
        except ValueError:
            raise typer.BadParameter(f"{part!r}: use START+LENGTH in simulated seconds, e.g. 7200+1800") from None
    return out


def simulate_cmd(
    broker: str = typer.Option("mqtt://127.0.0.1:1883", "--broker", help="Broker the nodes publish to (plain MQTT)."),
    nodes: int = typer.Option(5, "--nodes", "-n", help="Total nodes; split 60 % air / 40 % traffic unless --air/--traffic."),
    air: int = typer.Option(None, "--air", help="Air-quality nodes (overrides the split from --nodes)."),
    traffic: int = typer.Option(None, "--traffic", help="Traffic nodes (overrides the split from --nodes)."),
    duration: float = typer.Option(3600, "--duration", "-d", help="Simulated seconds to run (86400 = a day)."),
    speedup: float = typer.Option(60, "--speedup", "-x", help="Simulated seconds per real second, at most: a host "
                                  "too slow for it makes the run longer, never skips a reading."),
    start: str = typer.Option(None, "--start", help="Simulated start (ISO date, UTC); default: now minus duration."),
    seed: int = typer.Option(1, "--seed", help="Same seed, same fleet: ids, places, signals and faults."),
    period: int = typer.Option(60, "--period", help="Reading interval of every node, s."),
    sample: int = typer.Option(60, "--sample", help="Sample interval, s (readings are means); 10 as in the field costs 6x CPU."),
    registry: str = typer.Option(None, "--registry", help="Add every virtual node to this kerbside registry file."),
    lez_from: str = typer.Option(None, "--lez-from", help="From this date the LEZ cuts heavy traffic (and NO2) inside it."),
    state_dir: str = typer.Option("sim-state", "--state-dir", help="Virtual flash of each node (kept across runs)."),
    wifi_drops: int = typer.Option(0, "--wifi-drops", help="Nodes that lose Wi-Fi once for --wifi-drop-s."),
    wifi_drop_s: float = typer.Option(3600, "--wifi-drop-s", help="Length of each Wi-Fi drop, simulated s."),
    broker_down: str = typer.Option("", "--broker-down", help="Windows no node reaches the broker: START+LEN,... (simulated s)."),
    reboots: int = typer.Option(0, "--reboots", help="Nodes that lose power once."),
    never_sync: int = typer.Option(0, "--never-sync", help="Nodes whose clock never syncs (readings go out unsynced)."),
    broken_sensor: int = typer.Option(0, "--broken-sensor", help="Nodes with a broken PM sensor / silent detector."),
    drain_timeout: float = typer.Option(60, "--drain-timeout", help="Real seconds to wait at the end for buffers to empty."),
) -> None:
    """Run a virtual fleet: N nodes executing the real firmware, with city-like signals and injected faults.

    Every node has its own virtual flash under --state-dir, so a second run continues where the first
    stopped (sequence numbers, boot counters, anything still buffered).

    Examples:

      kerbside simulate --nodes 10 --duration 86400 --speedup 1440          # a day in a minute

      kerbside simulate --nodes 50 --duration 604800 --speedup 3000 --registry reg.json --lez-from 2026-03-04

      kerbside simulate -n 6 -d 7200 -x 120 --wifi-drops 2 --wifi-drop-s 1800 --broker-down 3600+600 --never-sync 1
    """
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from kerbside.simulator.fleet import FaultPlan, Fleet, FleetConfig, parse_broker

    try:
        parse_broker(broker)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if air is None and traffic is None:
        air = max(0, round(nodes * 0.6))
        traffic = nodes - air
    air, traffic = air or 0, traffic or 0
    if air + traffic <= 0:
        raise typer.BadParameter("no nodes: give --nodes or --air/--traffic")
    if sample > period or period % sample:
        raise typer.BadParameter("--sample must divide --period")
    cfg = FleetConfig(broker=broker, air=air, traffic=traffic, seed=seed, duration=duration, speedup=speedup,
                      start=_when(start) if start else None, period=period, sample=sample,
                      lez_from=_when(lez_from) if lez_from else None, state_dir=Path(state_dir),
                      registry=Path(registry) if registry else None,
                      drain_timeout=drain_timeout,
                      faults=FaultPlan(wifi_drop_nodes=wifi_drops, wifi_drop_s=wifi_drop_s,
                                       broker_down=_windows(broker_down), reboot_nodes=reboots,
                                       never_sync_nodes=never_sync, broken_sensor_nodes=broken_sensor))
    console = Console()

    cols = ("nodes", "connected", "expected", "produced", "sent", "buffered", "dropped")

    def view(f: Fleet) -> Table:
        t = f.totals()
        when = dt.datetime.fromtimestamp(min(f.clock.now(), f.end), dt.UTC).strftime("%Y-%m-%d %H:%M")
        tab = Table(title=f"kerbside fleet - {f.phase} - simulated {when} UTC ({f.progress():.0%})")
        for col in cols:
            tab.add_column(col, justify="right")
        tab.add_row(*(str(t[k]) for k in cols))
        return tab

    try:
        fleet = Fleet(cfg)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    with Live(console=console, refresh_per_second=4) as live:
        fleet.on_tick = lambda f: live.update(view(f))
        try:
            snap = asyncio.run(fleet.run())
        except OSError as e:
            raise typer.BadParameter(f"cannot reach the broker {broker}: {e}") from None
    tab = Table(title="per node")
    for col in ("device", "kit", "zone", "expected", "produced", "sent", "buffered", "dropped", "boots", "synced"):
        tab.add_column(col)
    for s in snap:
        tab.add_row(s.device, s.kit, s.zone, str(s.expected), str(s.produced), str(s.sent), str(s.buffered),
                    str(s.dropped), str(s.boots), "yes" if s.synced else "NO")
    console.print(tab)
    short = [s for s in snap if s.produced != s.expected]
    if short:
        console.print(f"[bold red]{len(short)} node(s) did not take the readings they were due "
                      f"({sum(s.produced for s in short)} taken, {sum(s.expected for s in short)} expected)[/]")
        raise typer.Exit(1)
    if any(s.buffered for s in snap):
        console.print("[yellow]some readings are still buffered on virtual flash; "
                      "the next run with this --state-dir sends them[/]")


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_cmd)
