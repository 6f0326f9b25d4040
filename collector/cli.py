"""Collector-side commands: decode (and, with the collector service, collect and dlq)."""

from __future__ import annotations

import sys
import time

import typer


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
    from collector.decode import Rejected, decode

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


def register(app: typer.Typer) -> None:
    app.command("decode")(decode_cmd)
