"""The one `kerbside` command. Each area registers its own subcommands.

Area modules import their heavy dependencies inside the command functions, so
`kerbside --help` stays fast on a technician's laptop.
"""

from __future__ import annotations

import importlib

import typer

from kerbside import __version__

# Each module has register(app: typer.Typer). Add a line here for a new area.
_COMMAND_MODULES = (
    "kerbside.collector.cli",
    "kerbside.provisioning.cli",
    "kerbside.analysis.cli",
    "kerbside.simulator.cli",
    "kerbside.demo",
)

app = typer.Typer(
    name="kerbside",
    help="City sensor networks that never silently lose data.\n\n"
    "Nodes (ESP32 + MicroPython) buffer readings through outages and send compact CBOR over MQTT; "
    "the collector validates, de-duplicates and writes them to InfluxDB, and records every gap.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kerbside {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    app()
