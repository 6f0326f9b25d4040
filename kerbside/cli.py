"""The one `kerbside` command. Each area registers its own subcommands.

Area modules import their heavy dependencies inside the command functions, so
`kerbside --help` stays fast on a technician's laptop.

Errors are handled here, once: a KerbsideError (kerbside.core.errors) raised by
any command is printed as one line on stderr, without a traceback, and the
command exits with the error's exit_code (1, or 2 for settings and input the
user fixes). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import typer
from typer.core import TyperGroup

from kerbside import __version__
from kerbside.core.errors import KerbsideError
from kerbside.core.options import ConfigOpt

# Each module has register(app: typer.Typer). Add a line here for a new area.
_COMMAND_MODULES = (
    "kerbside.collector.cli",
    "kerbside.collector.fleet_cli",
    "kerbside.provisioning.cli",
    "kerbside.provisioning.release",
    "kerbside.analysis.cli",
    "kerbside.simulator.cli",
    "kerbside.demo",
)


class _Kerbside(TyperGroup):
    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KerbsideError as e:
            typer.echo(f"{typer.style('error:', fg='red', bold=True)} {e}", err=True)
            ctx.exit(e.exit_code)


app = typer.Typer(
    cls=_Kerbside,
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


@app.command("config")
def config_cmd(
    config: ConfigOpt = None,
    sources: bool = typer.Option(True, "--sources/--no-sources", help="Say where each value not at its default came from."),
) -> None:
    """Print the settings every command would use here, as a settings file; secrets are masked.

    Shows which file was read and which values come from it, from KERBSIDE_* variables, or are defaults
    (docs/configuration.md lists every key).

    Example:  KERBSIDE_BATCH_LINES=2000 kerbside config -c /etc/kerbside/collector.toml
    """
    from kerbside.core import options, settings

    cfg = options.load(config)
    if cfg.file is not None:
        where = str(cfg.file)
    elif settings.ENV_CONFIG in os.environ:
        where = f"none (${settings.ENV_CONFIG} is set and empty)"
    else:
        where = f"none (looked for {', '.join(str(p) for p in settings.SEARCH_PATH)})"
    typer.echo(f"# settings file: {where}\n")
    typer.echo(cfg.to_toml(mask=True, sources=sources), nl=False)


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    app()
