"""The attacker's tools: Mosquitto's own command-line clients, so an attack is what anyone could type."""

from __future__ import annotations

import subprocess
from pathlib import Path

from prov_helpers import LOOPBACK, WAIT, RenderedBroker

A, B = "0e0e0e01", "0e0e0e02"
"""The victim and the attacker: two provisioned nodes. The attacker holds its own secret (a stolen node)."""


def mosquitto_pub(port: int, user: str, password: str, topic: str, *, ca: Path | None = None, client_id: str | None = None,
                  message: bytes = b"x", file: Path | None = None, qos: int = 1) -> subprocess.CompletedProcess[str]:
    """One publish with mosquitto_pub (MQTT 3.1.1, clean session, like a fresh attacker's client)."""
    args = ["mosquitto_pub", "-h", LOOPBACK, "-p", str(port), "-u", user, "-P", password, "-t", topic, "-q", str(qos)]
    if ca is not None:
        args += ["--cafile", str(ca)]
    if client_id is not None:
        args += ["-i", client_id]
    args += ["-f", str(file)] if file is not None else ["-s"]
    return subprocess.run(args, input=None if file is not None else message.decode("latin-1"), capture_output=True,
                          text=True, timeout=WAIT * 3)


def node_pub(rb: RenderedBroker, device: str, topic: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """mosquitto_pub on the nodes' TLS listener with `device`'s own secret (a stolen node)."""
    return mosquitto_pub(rb.tls_port, device, rb.secrets[device], topic, ca=rb.ca, **kw)  # type: ignore[arg-type]


def topic(device: str, kind: str) -> str:
    return f"kerbside/v1/{device}/{kind}"


def settings_env(rb: RenderedBroker, **sections: dict[str, object]) -> dict[str, str]:
    """The environment that gives a `kerbside` command exactly this broker's settings (and `sections` on top)."""
    import dataclasses

    from kerbside.core.settings import Config, child_env

    cfg = Config()
    cfg.broker = dataclasses.replace(rb.settings)
    cfg.registry.path = str(rb.registry.path)
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, str(value) if isinstance(value, Path) else value)
    return child_env(cfg, base={})


def kerbside(env: dict[str, str] | None, *args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    """Run a `kerbside` command in-process with exactly `env`'s settings (None: the test's environment)."""
    from typer.testing import CliRunner

    from kerbside.cli import app

    return CliRunner().invoke(app, list(args), env=env, input=input)
