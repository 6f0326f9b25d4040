"""Collector-side commands: decode (and, with the collector service, collect and dlq)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from kerbside.core.options import ConfigOpt


def decode_cmd(
    topic: str = typer.Option(..., "--topic", "-t", help="MQTT topic the payload came on: kerbside/v1/<id>/readings."),
    hex_input: bool = typer.Option(False, "--hex", help="stdin holds hex text (whitespace ignored), not raw bytes."),
    now: float = typer.Option(None, "--now", help="Judge timestamps at this unix time, not the clock (old captures)."),
) -> None:
    """Decode one payload from stdin and print the InfluxDB line protocol the collector would write.

    A rejected payload prints its stable reason code on stderr and exits 1.

    Examples:

      mosquitto_sub -t 'kerbside/v1/+/readings' -C 1 -F %x | kerbside decode --hex -t kerbside/v1/00c0ffee/readings

      xxd -r -p capture.hex | kerbside decode -t kerbside/v1/00c0ffee/status
    """
    from kerbside.collector.decode import Rejected, decode

    raw = sys.stdin.buffer.read()
    if hex_input:
        text = b"".join(raw.split()).decode("ascii", "replace")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            typer.echo("error: stdin is not hex (drop --hex for raw bytes)", err=True)
            raise typer.Exit(2) from None
    try:
        decoded = decode(topic, raw, time.time() if now is None else now)
    except Rejected as e:
        typer.echo(f"rejected: {e.reason}: {e.detail}" if e.detail else f"rejected: {e.reason}", err=True)
        raise typer.Exit(1) from None
    for line in decoded.lines:
        typer.echo(line)


def _settings(config: Path | None, **flags: object):  # type: ignore[no-untyped-def]
    from kerbside.core import options

    return options.load(config, **flags)


def collect_cmd(
    config: ConfigOpt = None,
    mqtt: str = typer.Option(None, "--mqtt", help="Broker URL, mqtt://host:1883 or mqtts://host:8883 (mqtt.url)."),
    influx: str = typer.Option(None, "--influx", help="InfluxDB URL, e.g. http://127.0.0.1:8086 (influx.url)."),
    db: str = typer.Option(None, "--db", help="InfluxDB database, created if missing (influx.db)."),
    spool: str = typer.Option(None, "--spool", help="Spool directory for batches InfluxDB cannot take yet (spool.dir)."),
    registry: str = typer.Option(None, "--registry", help="Device registry JSON written by provisioning (registry.path)."),
    log_json: bool = typer.Option(None, "--log-json/--log-text", help="One JSON object per log line (log.json)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the effective config (secrets masked) and exit."),
) -> None:
    """Run the collector: MQTT (QoS1, persistent session) → validate → batch → InfluxDB, losing nothing.

    A message is acknowledged to the broker only once its points are in InfluxDB or fsynced to the spool;
    rejected messages go to the dead-letter store (see `kerbside dlq`). SIGTERM or Ctrl-C flushes, acks and exits 0.

    Examples:

      kerbside collect --config /etc/kerbside/collector.toml

      kerbside collect --mqtt mqtt://127.0.0.1:1883 --influx http://127.0.0.1:8086 --db kerbside --spool ./spool

      KERBSIDE_BATCH_LINES=2000 kerbside collect -c collector.toml --print-config

    Every setting is in docs/configuration.md; `kerbside config` shows where each value comes from.
    """
    import json
    import os
    import signal
    import threading

    from kerbside.collector import logs
    from kerbside.collector.service import Collector
    from kerbside.core.errors import KerbsideError, StorageError

    cfg = _settings(config, mqtt__url=mqtt, influx__url=influx, influx__db=db, spool__dir=spool,
                    registry__path=registry, log__json=log_json)
    if print_config:
        typer.echo(json.dumps(cfg.as_dict(mask=True), indent=2))
        return
    logs.setup(cfg.log.json, cfg.log.level)
    try:
        collector = Collector(cfg)
    except KerbsideError:
        raise
    except OSError as e:  # spool, state or dead-letter directory not creatable or not readable
        raise StorageError(str(e)) from e

    def on_signal(signum: int, frame: object) -> None:
        collector.stop()
        # Unacked messages are redelivered, so a hard exit after the grace period loses nothing.
        threading.Timer(20.0, lambda: os._exit(3)).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        collector.run()
    except KerbsideError:
        raise
    except OSError as e:
        typer.echo(f"error: {e} (is the port for /metrics free? set http.port)", err=True)
        raise typer.Exit(1) from None
    if collector.failed:
        typer.echo("error: the collector stopped after an internal error (see the log); unacked messages are kept "
                   "by the broker and redelivered on restart", err=True)
        os._exit(1)
    os._exit(0)  # the grace timer thread must not keep us alive


dlq_app = typer.Typer(help="Dead-letter store: messages and lines the collector could not write, with the reason.",
                      no_args_is_help=True)


_SPOOL_HELP = "The collector's spool directory (spool.dir): its dead letters are next to it unless dlq.dir says."


def _dlq(config: Path | None, spool: str | None):  # type: ignore[no-untyped-def]
    """The store `collect` writes with the same --config/--spool."""
    from kerbside.collector.dlq import DeadLetters

    cfg = _settings(config, spool__dir=spool)
    return cfg, DeadLetters(cfg.dlq_dir, cfg.dlq.max_bytes)


def _nowhere(cfg, store) -> str:  # type: ignore[no-untyped-def]
    """When the store's directory does not exist: most likely not the collector's settings, so say which were used."""
    if store.dir.is_dir():
        return ""
    where = f"dlq.dir = {cfg.dlq.dir}" if cfg.dlq.dir else f"next to spool.dir = {cfg.spool.dir}"
    return (f" (there is no dead-letter store at {store.dir}, {where}: give the collector's settings, -c FILE or "
            "--spool DIR as for `kerbside collect`)")


@dlq_app.command("list")
def dlq_list(
    config: ConfigOpt = None,
    spool: str = typer.Option(None, "--spool", help=_SPOOL_HELP),
    reason: str = typer.Option(None, "--reason", "-r", help="Only this reason code (see the summary)."),
    show_all: bool = typer.Option(False, "--all", help="Include entries already replayed."),
    limit: int = typer.Option(50, "--limit", "-n", help="Show at most this many (newest last); 0 = all."),
) -> None:
    """List dead letters, newest last, with a count per reason code.

    Reads the store one entry at a time: its size does not matter.

    Example: kerbside dlq list -c /etc/kerbside/collector.toml --reason unknown_device
    """
    import collections
    import datetime

    from rich.console import Console
    from rich.table import Table

    cfg, store = _dlq(config, spool)
    counts: collections.Counter[str] = collections.Counter()
    shown: collections.deque = collections.deque(maxlen=limit or None)
    for e in store.entries(include_replayed=show_all):
        if reason is None or e.reason == reason:
            counts[e.reason] += 1
            shown.append((e.id, e.time, e.reason, e.topic, e.detail[:80], e.truncated))
    console = Console()
    table = Table("id", "time (UTC)", "reason", "topic", "detail")
    for entry_id, t, why, topic, detail, truncated in shown:
        when = datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(entry_id, when, why, topic or "(InfluxDB line)", detail + (" [payload truncated]" if truncated else ""))
    console.print(table)
    summary = ", ".join(f"{r}: {n}" for r, n in counts.most_common()) or "none"
    console.print(f"{sum(counts.values())} entries in {store.dir} ({summary}){_nowhere(cfg, store)}.")
    console.print("Next: kerbside dlq show ID, or fix the cause and kerbside dlq replay --reason R")


@dlq_app.command("show")
def dlq_show(
    entry_id: str = typer.Argument(..., help="Entry id or a unique prefix of it (from dlq list)."),
    config: ConfigOpt = None,
    spool: str = typer.Option(None, "--spool", help=_SPOOL_HELP),
) -> None:
    """Show one dead letter: reason, detail, payload as hex, and what the decoder says about it today."""
    import datetime

    from kerbside.collector.decode import Rejected, decode
    from kerbside.collector.dlq import NoSuchEntry

    cfg, store = _dlq(config, spool)
    try:
        e = store.get(entry_id)
    except NoSuchEntry as err:
        raise NoSuchEntry(f"{err}{_nowhere(cfg, store)}") from None
    typer.echo(f"id:      {e.id}")
    typer.echo(f"time:    {datetime.datetime.fromtimestamp(e.time, datetime.UTC).isoformat()}")
    typer.echo(f"reason:  {e.reason}")
    typer.echo(f"detail:  {e.detail}")
    if e.is_line:
        typer.echo(f"line:    {e.payload.decode(errors='replace')}")
        return
    typer.echo(f"topic:   {e.topic}")
    if e.truncated:
        typer.echo(f"payload: {e.size} bytes, sha256 {e.sha256}; the first {len(e.payload)} kept: {e.payload.hex()}")
        typer.echo("(larger than the contract allows: only its start was kept, it cannot be replayed)")
        return
    typer.echo(f"payload: {e.payload.hex()} ({len(e.payload)} bytes, sha256 {e.sha256})")
    try:
        d = decode(e.topic, e.payload, e.time)
        typer.echo(f"decodes today into {len(d.lines)} lines (replay it if the cause is fixed)")
    except Rejected as r:
        typer.echo(f"decoder today: {r.reason}: {r.detail}")


@dlq_app.command("replay")
def dlq_replay(
    config: ConfigOpt = None,
    spool: str = typer.Option(None, "--spool", help=_SPOOL_HELP),
    reason: str = typer.Option(None, "--reason", "-r", help="Only entries with this reason code."),
    ids: Annotated[list[str] | None, typer.Option("--id", help="Only these entries (repeatable; id prefixes).")] = None,
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be replayed, change nothing."),
) -> None:
    """Send dead letters through again once their cause is fixed.

    Each entry goes through today's decoder, registry and retention policies straight into InfluxDB, as the
    collector would write it (no broker involved); lines InfluxDB refused are written again. An entry that is
    refused again stays in the store and is listed with its reason. Replayed entries are hidden from
    `dlq list` (use --all).
    Oversize payloads, of which only the start was kept, are never replayed.

    Example: after adding a node to the registry, kerbside dlq replay -c collector.toml --reason unknown_device
    """
    from rich.progress import Progress

    from kerbside.collector.influx import InfluxWriter
    from kerbside.collector.replay import replay

    cfg, store = _dlq(config, spool)
    entries = [e for e in store.entries() if (reason is None or e.reason == reason)
               and (not ids or any(e.id.startswith(i) for i in ids)) and not e.truncated]
    if not entries:
        typer.echo("nothing to replay (kerbside dlq list shows what is there)")
        return
    if dry_run:
        for e in entries:
            typer.echo(f"{e.id} {e.reason} {e.topic or '(line)'}")
        typer.echo(f"{len(entries)} entries would be replayed")
        return
    writer = InfluxWriter(cfg.influx)
    try:
        with Progress() as progress:
            task = progress.add_task("replaying", total=len(entries))
            out = replay(entries, cfg, writer, on_entry=lambda _e: progress.advance(task))
    finally:
        writer.close()
    store.mark_replayed(out.done)  # only what InfluxDB took
    if out.stopped:
        typer.echo(f"error: InfluxDB unavailable: {out.stopped}", err=True)
    for entry_id, why in out.failed:
        typer.echo(f"{entry_id}: still refused: {why}", err=True)
    typer.echo(f"replayed {len(out.done)} of {len(entries)} entries")
    if len(out.done) < len(entries):
        raise typer.Exit(1)


gaps_app = typer.Typer(help="Sequence gaps: find them from what InfluxDB holds (for collectors in a shared group).",
                       no_args_is_help=True)


@gaps_app.command("scan")
def gaps_scan(
    config: ConfigOpt = None,
    influx: str = typer.Option(None, "--influx", help="InfluxDB URL (influx.url)."),
    db: str = typer.Option(None, "--db", help="InfluxDB database (influx.db)."),
    since: str = typer.Option("6h", "--since", help="Window to scan: 90m, 6h, 2d. Gaps older than this are left as recorded."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the gap records instead of writing them."),
) -> None:
    """Write kerbside_gaps records from the sequence numbers stored in InfluxDB.

    Collectors in a shared-subscription group (mqtt.group) each see part of every device's stream, so they
    leave gap records to this scan: run it every few minutes (a systemd timer) with a window longer than a
    node's longest expected outage. A single collector tracks gaps live and does not need it.

    Example:

      kerbside gaps scan -c /etc/kerbside/collector.toml --since 2d
    """
    from kerbside.collector.gapscan import scan
    from kerbside.collector.influx import client_for
    from kerbside.core.influx import InfluxError

    cfg = _settings(config, influx__url=influx, influx__db=db)
    units = {"m": 60, "h": 3600, "d": 86400}
    try:
        since_s = int(float(since[:-1]) * units[since[-1]])
    except (KeyError, ValueError, IndexError):
        typer.echo(f"error: --since {since!r}: use a number with m, h or d, e.g. 6h", err=True)
        raise typer.Exit(2) from None
    with client_for(cfg.influx, timeout=60) as client:
        try:
            records = scan(client.query, since_s)
            lines = [rec.line() for rec in records]
            if dry_run:
                for line in lines:
                    typer.echo(line)
            else:
                client.write(lines, cfg.influx.rp)
        except InfluxError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
    open_now = sum(1 for r in records if r.missing)
    typer.echo(f"{len(records)} gap records {'found' if dry_run else 'written'}; {open_now} still missing readings "
               f"({sum(r.missing for r in records)} in all)", err=True)


def register(app: typer.Typer) -> None:
    app.command("decode")(decode_cmd)
    app.command("collect")(collect_cmd)
    app.add_typer(dlq_app, name="dlq")
    app.add_typer(gaps_app, name="gaps")
