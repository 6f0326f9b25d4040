"""`kerbside db`, `kerbside report` and `kerbside export`: the analyst's commands.

Heavy imports (pandas, matplotlib, jsonschema) happen inside the commands so
`kerbside --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from kerbside.core import options
from kerbside.core.options import ConfigOpt

InfluxOpt = Annotated[str | None, typer.Option("--influx", help="InfluxDB 1.x URL (influx.url).", show_default=False)]
DbOpt = Annotated[str | None, typer.Option("--db", help="InfluxDB database the collector writes to (influx.db).",
                                           show_default=False)]
TzOpt = Annotated[str | None, typer.Option("--tz", help="IANA time zone for local days: daily means run local midnight "
                                                        "to midnight, 23/25 h on DST days (analysis.tz).", show_default=False)]
PeriodOpt = Annotated[int | None, typer.Option("--period", min=1, show_default=False,
                                               help="Seconds between readings of a node; sets the readings expected per "
                                                    "hour for data capture (node.period).")]

db_app = typer.Typer(help="Database layout (retention policies, continuous queries) and aggregate backfill.",
                     no_args_is_help=True)
report_app = typer.Typer(help="Analysis reports for the city.", no_args_is_help=True)
export_app = typer.Typer(help="Hand data to other platforms in open standards.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.add_typer(report_app, name="report")
    app.add_typer(export_app, name="export")


def _range(first: str | None, last: str | None, tz: str, client):  # type: ignore[no-untyped-def]
    from kerbside.analysis import query
    from kerbside.analysis.timerange import LocalRange, parse_day

    if first and last:
        return LocalRange(parse_day(first), parse_day(last), tz)
    span = query.span(client, tz)
    return LocalRange(parse_day(first) if first else span.first, parse_day(last) if last else span.last, tz)


@db_app.command("init")
def init_cmd(
    config: ConfigOpt = None,
    influx: InfluxOpt = None,
    db: DbOpt = None,
    raw_duration: str = typer.Option("400d", help="How long raw readings are kept (InfluxQL duration, INF = forever)."),
    agg_duration: str = typer.Option("INF", help="How long hourly aggregates are kept."),
    resample_every: str = typer.Option("5m", help="How often the continuous queries run."),
    resample_for: str = typer.Option("6h", help="How far back each run recomputes hours, so late back-filled readings "
                                                "are folded in. Older late data needs `kerbside db backfill`."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the InfluxQL and change nothing."),
) -> None:
    """Create the database, its retention policies and the hourly continuous queries (safe to re-run).

    Retention policies: raw (default; where the collector writes), agg (hourly means with counts and capture),
    unsynced (readings whose node clock was not synced; kept forever for forensic re-timing).

    Run it before the collector first writes, then `kerbside db backfill` after long outages.

    Example:  kerbside db init --db kerbside --raw-duration 400d --resample-for 12h
    """
    from kerbside.analysis.influx import Influx
    from kerbside.analysis.schema import Layout, init_db, init_statements

    cfg = options.load(config, influx__url=influx, influx__db=db)
    layout = Layout(cfg.influx.db, raw_duration, agg_duration, resample_every, resample_for)
    if dry_run:
        for stmt in init_statements(layout):
            typer.echo(stmt + ";")
        return
    with Influx(cfg.influx.url, cfg.influx.db) as client:
        for stmt in init_db(client, layout):
            typer.echo(f"ok  {stmt[:110]}{'…' if len(stmt) > 110 else ''}")
    typer.echo(f"database {cfg.influx.db} ready on {cfg.influx.url}")


@db_app.command("backfill")
def backfill_cmd(
    first: str = typer.Option(..., "--from", help="First local day to recompute, YYYY-MM-DD."),
    last: str = typer.Option(..., "--to", help="Last local day to recompute (inclusive), YYYY-MM-DD."),
    config: ConfigOpt = None,
    influx: InfluxOpt = None,
    db: DbOpt = None,
    tz: TzOpt = None,
) -> None:
    """Recompute the hourly aggregates of a range from the raw readings.

    Needed when readings arrive later than the continuous queries' --resample-for window (a node back from a
    long outage, an import of old data). Idempotent: re-running it rewrites the same hourly points.

    Example:  kerbside db backfill --from 2026-03-01 --to 2026-03-31
    """
    from rich.progress import Progress

    from kerbside.analysis.influx import Influx
    from kerbside.analysis.schema import backfill
    from kerbside.analysis.timerange import LocalRange, parse_day

    cfg = options.load(config, influx__url=influx, influx__db=db, analysis__tz=tz)
    tz = cfg.analysis.tz
    with Influx(cfg.influx.url, cfg.influx.db) as client, Progress(transient=True) as bar:
        rng = LocalRange(parse_day(first), parse_day(last), tz)
        task = bar.add_task("recomputing hourly aggregates", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        n = backfill(client, rng.start, rng.end, progress=tick)
    if n == 0:
        typer.echo(f"no raw readings between {rng.first} and {rng.last} ({tz}): nothing to recompute. "
                   "Check --db and the dates; raw readings older than the raw retention are gone.")
        return
    typer.echo(f"recomputed {n} hourly points for {rng.first} .. {rng.last} ({tz})")


@report_app.command("lez")
def lez_cmd(
    zone: str = typer.Option(..., "--zone", help="Zone tag of the sites inside the LEZ (e.g. lez); every other site "
                                                 "is the comparison group."),
    before: str = typer.Option(..., "--before", help="The before period is every analysed day BEFORE this date."),
    after: str = typer.Option(..., "--after", help="The after period is every day FROM this date on. Use the LEZ start "
                                                   "date for both, or leave a phase-in between them."),
    out: Annotated[Path, typer.Option("--out", help="Directory for report.html, PNGs and summary.json.")] = Path("lez-report"),
    first: str = typer.Option(None, "--from", help="First day analysed (default: first day with data)."),
    last: str = typer.Option(None, "--to", help="Last day analysed, inclusive (default: last day with data)."),
    config: ConfigOpt = None,
    influx: InfluxOpt = None,
    db: DbOpt = None,
    tz: TzOpt = None,
    period: PeriodOpt = None,
    n_boot: int = typer.Option(2000, "--bootstrap", min=100, help="Bootstrap resamples for the DiD interval."),
    block_days: int = typer.Option(1, "--block-days", min=1, help="Bootstrap block length in days; use 7 for series "
                                                                  "of several months (day-to-day autocorrelation)."),
) -> None:
    """Inside vs outside the LEZ, before vs after: means with capture, exceedances, traffic, DiD, data quality.

    Example (LEZ started 1 April 2026, one month on each side):

      kerbside report lez --zone lez --before 2026-04-01 --after 2026-04-01 --from 2026-03-01 --to 2026-04-30
    """
    from kerbside.analysis.influx import Influx
    from kerbside.analysis.report import ReportSpec, build
    from kerbside.analysis.timerange import parse_day

    cfg = options.load(config, influx__url=influx, influx__db=db, analysis__tz=tz, node__period=period)
    with Influx(cfg.influx.url, cfg.influx.db) as client:
        rng = _range(first, last, cfg.analysis.tz, client)
        spec = ReportSpec(zone, parse_day(before), parse_day(after), rng, cfg.node.period, n_boot, block_days)
        summary = build(client, spec, out, progress=lambda s: typer.echo(f"… {s}", err=True))
    no2 = summary["did"].get("no2")
    if no2:
        typer.echo(f"NO2 difference-in-differences: {no2['estimate']:+.1f} µg/m³ "
                   f"(95 % {no2['ci_low']:+.1f} .. {no2['ci_high']:+.1f})")
    typer.echo(f"report: {out / 'report.html'}")


@export_app.command("ngsi-ld")
def ngsi_ld_cmd(
    first: str = typer.Option(None, "--from", help="First local day (default: last day with data)."),
    last: str = typer.Option(None, "--to", help="Last local day, inclusive (default: last day with data)."),
    registry: Annotated[Path | None, typer.Option("--registry", show_default=False, help="Device registry with lat/lon "
                                                  "and site (registry.path; default ./kerbside-registry.json).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Directory for the .jsonld files, one per entity type.")] = Path(
        "ngsi-ld"),
    current: bool = typer.Option(False, "--current", help="Only the latest hour per device, with stable ids (a live "
                                                          "digital twin) instead of one entity per hour."),
    broker: str = typer.Option(None, "--broker", help="Also upsert to this NGSI-LD broker, e.g. http://orion-ld:1026."),
    config: ConfigOpt = None,
    influx: InfluxOpt = None,
    db: DbOpt = None,
    tz: TzOpt = None,
    period: PeriodOpt = None,
) -> None:
    """Hourly AirQualityObserved and TrafficFlowObserved entities (FIWARE Smart Data Models) as NGSI-LD JSON-LD.

    Every entity is validated against the Smart Data Models JSON Schemas shipped in analysis/schemas before
    anything is written. reliability = hourly data capture (0..1).

    Example:  kerbside export ngsi-ld --from 2026-04-01 --to 2026-04-07 --broker http://127.0.0.1:1026
    """
    from kerbside.analysis import ngsi_ld
    from kerbside.analysis.influx import Influx
    from kerbside.core.registry import Registry

    cfg = options.load(config, influx__url=influx, influx__db=db, analysis__tz=tz, node__period=period,
                       registry__path=registry)
    tz = cfg.analysis.tz
    with Influx(cfg.influx.url, cfg.influx.db) as client:
        reg = cfg.registry.or_default()
        devices = Registry(reg).load()
        if not devices:
            raise ngsi_ld.ExportError(f"registry {reg} is missing or empty; pass --registry with the file "
                                      "provisioning writes")
        if first is None and last is None:
            from kerbside.analysis import query

            end = query.span(client, tz)
            first = last = str(end.last)
        rng = _range(first, last, tz, client)
        ents = ngsi_ld.build(client, rng, devices, cfg.node.period, current)
        for p in ngsi_ld.write_files(ents, out):
            typer.echo(f"wrote {p}")
        if broker:
            echo: Callable[[int, int], None] = lambda done, total: typer.echo(f"… {done}/{total} upserted", err=True)  # noqa: E731
            n = ngsi_ld.post(ents, broker, progress=echo)
            typer.echo(f"upserted {n} entities to {broker}")
