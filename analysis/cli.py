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
RegistryOpt = Annotated[Path | None, typer.Option("--registry", show_default=False,
                                                  help="Device registry (registry.path; default ./kerbside-registry.json): "
                                                       "site locations and calibration coefficients.")]
RawOpt = Annotated[bool, typer.Option("--raw", help="Use the sensors' own values even where calibration coefficients exist.")]
FromOpt = Annotated[str | None, typer.Option("--from", help="First local day (default: first day with data).")]
ToOpt = Annotated[str | None, typer.Option("--to", help="Last local day, inclusive (default: last day with data).")]
TablesOutOpt = Annotated[Path, typer.Option("--out", help="Directory for the four files.")]
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
    app.command("calibrate")(calibrate_cmd)
    app.command("recipes")(recipes_cmd)


def _calibrations(cfg, raw: bool):  # type: ignore[no-untyped-def]
    """The registry's calibration coefficients, or none with --raw or without a registry file."""
    from kerbside.analysis import calibration

    reg = cfg.registry.or_default()
    if raw or not reg.exists():
        return {}
    return calibration.load(reg)


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
    registry: RegistryOpt = None,
    raw: RawOpt = False,
) -> None:
    """Inside vs outside the LEZ, before vs after: a one-page summary for the council, then limits, means with
    95 % intervals, traffic matched by weekday and hour, calibration and data quality.

    Calibrated values are used where `kerbside calibrate` stored coefficients in the registry (--raw: never).

    Example (LEZ started 1 April 2026, one month on each side):

      kerbside report lez --zone lez --before 2026-04-01 --after 2026-04-01 --from 2026-03-01 --to 2026-04-30
    """
    from kerbside.analysis.influx import Influx
    from kerbside.analysis.report import ReportSpec, build
    from kerbside.analysis.timerange import parse_day

    cfg = options.load(config, influx__url=influx, influx__db=db, analysis__tz=tz, node__period=period,
                       registry__path=registry)
    cal = _calibrations(cfg, raw)
    with Influx(cfg.influx.url, cfg.influx.db) as client:
        rng = _range(first, last, cfg.analysis.tz, client)
        spec = ReportSpec(zone, parse_day(before), parse_day(after), rng, cfg.node.period, n_boot, block_days, cal)
        summary = build(client, spec, out, progress=lambda s: typer.echo(f"… {s}", err=True))
    no2 = summary["did"].get("no2")
    if no2:
        typer.echo(f"NO2 difference-in-differences: {no2['estimate']:+.1f} µg/m³ "
                   f"(95 % {no2['ci_low']:+.1f} .. {no2['ci_high']:+.1f})")
    for m in summary["missing"]:
        typer.echo(f"not in the report: {m}", err=True)
    if summary["calibrated_devices"]:
        typer.echo(f"calibrated values used for {len(summary['calibrated_devices'])} node(s)")
    typer.echo(f"report: {out / 'report.html'}")


@export_app.command("ngsi-ld")
def ngsi_ld_cmd(
    first: str = typer.Option(None, "--from", help="First local day (default: last day with data)."),
    last: str = typer.Option(None, "--to", help="Last local day, inclusive (default: last day with data)."),
    registry: RegistryOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Directory for the .jsonld files.")] = Path("ngsi-ld"),
    current: bool = typer.Option(False, "--current", help="Only the latest state of each entity (a live digital "
                                                          "twin), without the temporal history files."),
    broker: str = typer.Option(None, "--broker", help="Also send to this NGSI-LD broker, e.g. http://orion-ld:1026: "
                                                      "upsert the entities, then POST their history to /temporal."),
    config: ConfigOpt = None,
    influx: InfluxOpt = None,
    db: DbOpt = None,
    tz: TzOpt = None,
    period: PeriodOpt = None,
    raw: RawOpt = False,
) -> None:
    """AirQualityObserved, TrafficFlowObserved and Device entities (FIWARE Smart Data Models) as NGSI-LD.

    One entity per device (traffic: per device and lane direction) with its latest hour, one Device entity each
    (so refDevice resolves), and the hourly history in the NGSI-LD temporal representation (*.temporal.jsonld).
    Every property has observedAt and units; every hourly snapshot is validated against the Smart Data Models
    schemas shipped in analysis/schemas before anything is written. reliability = hourly data capture (0..1).
    Negative concentrations are exported as 0 with the measured value kept in a measuredValue sub-property.

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
        ents = ngsi_ld.build(client, rng, devices, cfg.node.period, current, _calibrations(cfg, raw))
        for p in ngsi_ld.write_files(ents, out):
            typer.echo(f"wrote {p} ({len(ents[p.name.removesuffix('.jsonld')])} entities)")
        if broker:
            echo: Callable[[int, int], None] = lambda done, total: typer.echo(f"… {done}/{total} sent", err=True)  # noqa: E731
            n = ngsi_ld.post(ents, broker, progress=echo)
            typer.echo(f"sent {n} entities to {broker}")


@export_app.command("csv")
def csv_cmd(
    first: FromOpt = None, last: ToOpt = None, out: TablesOutOpt = Path("kerbside-export"),
    config: ConfigOpt = None, influx: InfluxOpt = None, db: DbOpt = None, tz: TzOpt = None, period: PeriodOpt = None,
    registry: RegistryOpt = None, raw: RawOpt = False,
) -> None:
    """Hourly and daily values per site and per zone, with capture, validity and calibration flags, as CSV.

    Writes hourly-sites, daily-sites, hourly-zones and daily-zones. Zone values are means of the valid site
    values. Example:  kerbside export csv --from 2026-03-01 --to 2026-03-31 --out march
    """
    _export_tables("csv", first, last, out, config, influx, db, tz, period, registry, raw)


@export_app.command("parquet")
def parquet_cmd(
    first: FromOpt = None, last: ToOpt = None, out: TablesOutOpt = Path("kerbside-export"),
    config: ConfigOpt = None, influx: InfluxOpt = None, db: DbOpt = None, tz: TzOpt = None, period: PeriodOpt = None,
    registry: RegistryOpt = None, raw: RawOpt = False,
) -> None:
    """The same four tables as `export csv`, as Parquet (typed columns: booleans, timestamps, floats).

    Example:  kerbside export parquet --from 2026-03-01 --to 2026-03-31 --out march
    """
    _export_tables("parquet", first, last, out, config, influx, db, tz, period, registry, raw)


def _export_tables(fmt: str, first, last, out, config, influx, db, tz, period, registry, raw) -> None:  # type: ignore[no-untyped-def]
    from kerbside.analysis import exports
    from kerbside.analysis.influx import Influx

    cfg = options.load(config, influx__url=influx, influx__db=db, analysis__tz=tz, node__period=period,
                       registry__path=registry)
    cal = _calibrations(cfg, raw)
    with Influx(cfg.influx.url, cfg.influx.db) as client:
        rng = _range(first, last, cfg.analysis.tz, client)
        frames = exports.tables(client, rng, cfg.node.period, cal)
    for p in exports.write(frames, out, fmt):
        typer.echo(f"wrote {p} ({len(frames[p.name.split('.')[0]]):,} rows)")
    if cal:
        typer.echo(f"calibrated values for {len(cal)} node(s) where their coefficients apply (<p>_calibrated)")


def calibrate_cmd(
    reference: Annotated[Path, typer.Option("--reference", help="Reference station's hourly series: CSV with columns "
                                                                "timestamp,pollutant,value (µg/m3).")],
    devices: Annotated[list[str], typer.Option("--device", help="A node co-located with the reference (repeat).")],
    first: str = typer.Option(None, "--from", help="First local day of the co-location (default: the reference's first)."),
    last: str = typer.Option(None, "--to", help="Last local day of the co-location (default: the reference's last)."),
    valid_from: str = typer.Option(None, "--valid-from", help="First local day the coefficients apply to "
                                                              "(default: the first co-location day)."),
    valid_to: str = typer.Option(None, "--valid-to", help="Last local day they apply to (default: until the next "
                                                          "calibration of that node and pollutant)."),
    timestamp: str = typer.Option("start", "--timestamp", help="Whether the reference stamps the start or the end of "
                                                               "each hour: start|end."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Fit and report, store nothing."),
    config: ConfigOpt = None, influx: InfluxOpt = None, db: DbOpt = None, tz: TzOpt = None, period: PeriodOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Fit co-located nodes against a reference station: reference = a + b*sensor + c*RH + d*T per pollutant.

    Stores the coefficients in the registry with their validity period; reports, exports and query.hourly use
    them from then on. Each fit is judged against the Directive's data-quality objective for indicative
    measurements (Annex V: NO2 25 %, PM 50 % expanded uncertainty).

    Example:  kerbside calibrate --reference station-12.csv --device 0a1b2c3d --device 0a1b2c3e --from 2026-02-01
    """
    from rich.console import Console
    from rich.table import Table

    from kerbside.analysis import calibration, query
    from kerbside.analysis.influx import Influx
    from kerbside.analysis.timerange import LocalRange, local_midnight, parse_day
    from kerbside.core.registry import Registry

    if timestamp not in ("start", "end"):
        raise calibration.CalibrationError("--timestamp is start or end")
    cfg = options.load(config, influx__url=influx, influx__db=db, analysis__tz=tz, node__period=period,
                       registry__path=registry)
    tz = cfg.analysis.tz
    ref = calibration.read_reference(reference, timestamp)
    if ref.empty:
        raise calibration.CalibrationError(f"{reference}: no values")
    lo = parse_day(first) if first else ref["time"].min().tz_convert(tz).date()
    hi = parse_day(last) if last else ref["time"].max().tz_convert(tz).date()
    rng = LocalRange(lo, hi, tz)
    reg = cfg.registry.or_default()
    known = Registry(reg).load()
    unknown = [d for d in devices if d not in known]
    if unknown and not dry_run:
        raise calibration.CalibrationError(f"not in the registry {reg}: {', '.join(unknown)}; pass --registry")
    vf = local_midnight(parse_day(valid_from), tz) if valid_from else rng.start
    vt = LocalRange(parse_day(valid_to), parse_day(valid_to), tz).end if valid_to else None
    with Influx(cfg.influx.url, cfg.influx.db) as client:
        hours = query.hourly(client, rng, cfg.node.period, sites=None)
    fits, problems = [], []
    for dev in devices:
        for p in sorted(set(ref["pollutant"]) & set(calibration.POLLUTANTS)):
            try:
                fits.append(calibration.fit(dev, p, hours, ref, reference_name=reference.name, valid_from=vf, valid_to=vt))
            except calibration.CalibrationError as e:
                problems.append(str(e))
    table = Table(title=f"calibration against {reference.name}, {rng.first} .. {rng.last}")
    for col in ("device", "pollutant", "hours", "R²", "RMSE µg/m³", "bias µg/m³", "uncertainty", "objective",
                "sensor gain", "sensor offset"):
        table.add_column(col, justify="right")
    for f in fits:
        c = f.coefficients
        table.add_row(f.device, c.pollutant, str(c.hours), f"{c.r2:.3f}", f"{c.rmse:.2f}", f"{c.bias:+.2f}",
                      f"{100 * c.uncertainty:.0f} % at {c.limit_value:g}",
                      f"{'meets' if c.meets_dqo else 'MISSES'} {100 * c.dqo:.0f} %", f"{f.raw_gain:.3f}",
                      f"{f.raw_offset:+.2f}")
    Console().print(table)
    for msg in problems:
        typer.echo(f"not fitted: {msg}", err=True)
    if not fits:
        raise calibration.CalibrationError("nothing fitted: " + "; ".join(problems[:3]))
    if dry_run:
        typer.echo("dry run: nothing stored")
        return
    calibration.store(reg, fits)
    typer.echo(f"stored {len(fits)} calibration(s) in {reg}, valid from {vf.isoformat()}"
               + (f" to {vt.isoformat()}" if vt else " until the next calibration"))


def recipes_cmd(
    site: str = typer.Option(None, "--site", help="Site for the single-site recipes (default: the first with data)."),
    zone: str = typer.Option("lez", "--zone", help="Zone tag of the LEZ sites."),
    first: str = typer.Option(None, "--from", help="First local day (default: first day with data)."),
    last: str = typer.Option(None, "--to", help="Last local day (default: last day with data)."),
    after: str = typer.Option(None, "--after", help="LEZ start day for the before/after recipes (default: --from)."),
    config: ConfigOpt = None, influx: InfluxOpt = None, db: DbOpt = None, tz: TzOpt = None, registry: RegistryOpt = None,
) -> None:
    """Print docs/analysts.md's InfluxQL and Python recipes filled in for this database, ready to paste.

    Example:  kerbside recipes --influx http://127.0.0.1:8086 --db kerbside
    """
    from kerbside.analysis import recipes
    from kerbside.analysis.influx import Influx
    from kerbside.analysis.timerange import parse_day

    cfg = options.load(config, influx__url=influx, influx__db=db, analysis__tz=tz, registry__path=registry)
    with Influx(cfg.influx.url, cfg.influx.db) as client:
        rng = _range(first, last, cfg.analysis.tz, client)
        if site is None:
            tags = client.query('SHOW TAG VALUES FROM "agg"."air_1h" WITH KEY = "site"')
            sites = sorted(v[1] for s in tags for v in s["values"])
            site = sites[0] if sites else "SITE"
    vals = recipes.values(cfg.influx.url, cfg.influx.db, rng, site, zone, parse_day(after) if after else None,
                          str(cfg.registry.or_default()))
    for line in recipes.lines(vals):
        typer.echo(line)
