"""The command-line side of the settings: the --config option every command shares, and loading with flags.

A flag that sets a setting defaults to None ("not given"), so that the
settings file and the environment show through it; its help names the key
(docs/configuration.md has the default). Warnings (an unknown KERBSIDE_*
variable, a world-readable file holding secrets) go to stderr before the
command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from kerbside.core import settings

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", show_default=False,
    help="Settings file (TOML, docs/configuration.md). Default: $KERBSIDE_CONFIG, else ./kerbside.toml, "
         "~/.config/kerbside/kerbside.toml, /etc/kerbside/kerbside.toml. KERBSIDE_<SECTION>_<KEY> and flags override it.")]


def load(config: Path | None, **flags: Any) -> settings.Config:
    """Settings for a command: `flags` maps "section__key" to the flag's value (None: not given)."""
    cfg = settings.load(config, overrides={k.replace("__", "."): v for k, v in flags.items()})
    for w in cfg.warnings:
        typer.echo(f"warning: {w}", err=True)
    return cfg
