"""`kerbside flash | provision | registry | broker-config`: the technician's and operator's commands.

Heavy imports (esptool, serial, cryptography) happen inside the commands so
`kerbside --help` stays instant. Every error ends with what to do next, and
no command ever prints a node secret or a Wi-Fi key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err = Console(stderr=True)

ENV_BROKER_DIR = "KERBSIDE_BROKER_DIR"
ENV_IMAGE = "KERBSIDE_FIRMWARE_IMAGE"

RegistryOpt = Annotated[Path | None, typer.Option(
    "--registry", envvar="KERBSIDE_REGISTRY", help="Device registry file (shared with the collector). "
    "Default ./kerbside-registry.json.", show_default=False)]
BrokerDirOpt = Annotated[Path | None, typer.Option(
    "--broker-dir", envvar=ENV_BROKER_DIR, help="Broker directory written by `kerbside broker-config`; when given, its "
    "password file is re-rendered right away.", show_default=False)]


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _registry(path: Path | None):  # type: ignore[no-untyped-def]
    from kerbside.core.registry import Registry
    from kerbside.provisioning.fleet import registry_path

    return Registry(registry_path(path))


def _refresh_broker(broker_dir: Path | None, registry) -> None:  # type: ignore[no-untyped-def]
    from kerbside.provisioning.broker import RELOAD_HINT
    from kerbside.provisioning.broker_dir import BrokerDir, render_auth

    if broker_dir is None:
        console.print("Next: re-render the broker's password file with [bold]kerbside broker-config[/] (or pass "
                      f"--broker-dir), then {RELOAD_HINT}.")
        return
    render_auth(BrokerDir(broker_dir), registry.load())
    console.print(f"Re-rendered {broker_dir / 'passwd'}. Now {RELOAD_HINT}.")


# --- flash -------------------------------------------------------------------------------------------


def flash_cmd(
    port: Annotated[str | None, typer.Option("--port", "-p", help="Serial port, e.g. /dev/ttyUSB0. Found automatically "
                                             "when exactly one USB serial device is plugged in.")] = None,
    firmware: Annotated[Path | None, typer.Option("--firmware", "-f", envvar=ENV_IMAGE, help="MicroPython 1.27 .bin for "
                                                  "the board (ESP32_GENERIC from micropython.org/download).")] = None,
    baud: Annotated[int, typer.Option(help="Fastest baud rate to try; lowered by itself when the USB link is flaky.")] = 460800,
    erase: Annotated[bool, typer.Option(help="Erase the whole flash first (removes any old config and secrets).")] = True,
) -> None:
    """Put MicroPython on a node: detect the chip, erase, write, verify, reset.

    Plug the node into USB. Most boards enter the bootloader by themselves; if
    yours does not, hold BOOT (IO0), tap EN (RST), release BOOT, and run this again.

    Next step: kerbside provision --kit air --site "..."
    """
    from kerbside.provisioning.flash import FlashError, flash
    from kerbside.provisioning.ports import PortError, choose

    if firmware is None:
        raise fail(f"which firmware? pass --firmware ESP32_GENERIC-v1.27.0.bin (or set ${ENV_IMAGE}); download it from "
                   "https://micropython.org/download/ESP32_GENERIC/")
    try:
        chosen = choose(port)
        with console.status(f"flashing {chosen}") as status:
            done = flash(chosen, firmware, baud=baud, erase=erase, say=lambda m: status.update(m))
    except (PortError, FlashError) as e:
        raise fail(str(e), 1) from None
    console.print(f"[green]PASS[/] {done.chip} on {done.port}: wrote and verified {done.image.name} "
                  f"({done.size // 1024} KiB at {done.offset:#x}, {done.baud} baud).")
    console.print('Next: [bold]kerbside provision --kit air|traffic --site "..."[/]')


# --- provision ---------------------------------------------------------------------------------------


def _selftest_table(out) -> Table:  # type: ignore[no-untyped-def]
    t = Table(title=f"Node {out.device_id} on {out.port}", title_justify="left")
    t.add_column("check")
    t.add_column("result")
    t.add_column("detail", overflow="fold")
    for c in out.selftest.checks if out.selftest else []:
        t.add_row(escape(c.name), "[green]PASS[/]" if c.ok else "[red]FAIL[/]", escape(c.detail))
    return t


def _load_profile(profile: Path | None, broker_host: str | None, broker_port: int | None, ca: Path | None,
                  wifi_ssid: str | None):  # type: ignore[no-untyped-def]
    from kerbside.provisioning.node_config import ENV_WIFI_PSK, load_profile

    p = load_profile(profile)
    if broker_host:
        p.host = broker_host
    if broker_port:
        p.port = broker_port
    if ca:
        p.ca = ca
    if wifi_ssid:
        p.wifi = [{"ssid": wifi_ssid, "psk": os.environ.get(ENV_WIFI_PSK, "")}] + [w for w in p.wifi if w["ssid"] != wifi_ssid]
    for w in p.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}")
    return p.check()


def provision_cmd(
    kit: Annotated[str | None, typer.Option(help="What the node measures: air or traffic.")] = None,
    site: Annotated[str | None, typer.Option(help="Where it is mounted, as analysts will search for it "
                                             "(e.g. 'Ringstrasse 12 north lamp post').")] = None,
    zone: Annotated[str, typer.Option(help="Zone tag, e.g. lez-inner or control.")] = "",
    lat: Annotated[float | None, typer.Option(help="Latitude (WGS84), with --lon.")] = None,
    lon: Annotated[float | None, typer.Option(help="Longitude (WGS84), with --lat.")] = None,
    port: Annotated[str | None, typer.Option("--port", "-p", help="Serial port; found automatically when only one "
                                             "USB serial device is plugged in.")] = None,
    batch: Annotated[Path | None, typer.Option(help="CSV with columns port,kit,site,zone,lat,lon: provision every row; "
                                               "a failed node does not stop the rest.")] = None,
    parallel: Annotated[bool, typer.Option(help="With --batch: provision nodes on different ports at the same time "
                                           "(a USB hub full of nodes).")] = False,
    profile: Annotated[Path | None, typer.Option(envvar="KERBSIDE_PROFILE", help="Depot profile (TOML): Wi-Fi, broker "
                                                 "address, CA. See docs/provisioning.md.")] = None,
    broker_host: Annotated[str | None, typer.Option(help="Broker host name nodes dial (overrides the profile).")] = None,
    broker_port: Annotated[int | None, typer.Option(help="Broker TLS port (overrides the profile).")] = None,
    ca: Annotated[Path | None, typer.Option(help="CA certificate nodes trust (overrides the profile).")] = None,
    wifi_ssid: Annotated[str | None, typer.Option(help="Wi-Fi network (overrides the profile); its key is read from "
                                                  "$KERBSIDE_WIFI_PSK, never from the command line.")] = None,
    new_identity: Annotated[bool, typer.Option(help="Give the node a new id and secret; its old id is decommissioned.")] = False,
    selftest: Annotated[bool, typer.Option(help="Run the on-node self-test (Wi-Fi, broker, first reading).")] = True,
    firmware_dir: Annotated[Path | None, typer.Option(help="Firmware source tree (with knode/ and main.py) to upload "
                                                      "instead of the one shipped with kerbside.")] = None,
    registry: RegistryOpt = None,
    broker_dir: BrokerDirOpt = None,
) -> None:
    """Give a node its identity, config, CA and firmware, then prove it works.

    Safe to re-run: a provisioned node keeps its id and secret, and only changed
    files are uploaded. Exit status 0 when every self-test check passed, 1 when
    a node failed, 2 on a usage error.

    Example:

      kerbside provision --kit air --site "Ringstrasse 12" --zone lez-inner --lat 48.2 --lon 16.37
    """
    from kerbside.provisioning import batch as batchmod
    from kerbside.provisioning.bundle import FIRMWARE, BundleError, build
    from kerbside.provisioning.node_config import ConfigError, NodeSpec
    from kerbside.provisioning.ports import PortError, choose
    from kerbside.provisioning.provision import provision

    reg = _registry(registry)
    try:
        prof = _load_profile(profile, broker_host, broker_port, ca, wifi_ssid)
        if batch is not None:
            if kit or site:
                raise ConfigError("--batch takes kit and site from the CSV; drop --kit/--site")
            rows = batchmod.parse(batch, port)
        else:
            if not kit or not site:
                raise ConfigError("pass --kit and --site (or --batch FILE.csv)")
            spec = NodeSpec(kit=kit, site=site, zone=zone, lat=lat, lon=lon).check()
            rows = [batchmod.Row(0, choose(port), spec)]
        with console.status("compiling firmware with mpy-cross"):
            firmware = build(firmware_dir or FIRMWARE)
    except (ConfigError, batchmod.BatchError, PortError, BundleError) as e:
        raise fail(str(e)) from None

    def registered() -> None:
        if broker_dir is not None:
            from kerbside.provisioning.broker_dir import BrokerDir, render_auth

            render_auth(BrokerDir(broker_dir), reg.load())

    def one(row: batchmod.Row, say: Callable[[str], None]):  # type: ignore[no-untyped-def]
        return provision(row.port, row.spec, prof, reg, firmware, new_identity=new_identity, run_selftest=selftest, say=say,
                         registered=registered)

    if batch is None:
        with console.status("provisioning") as status:
            results = batchmod.run(rows, lambda r: one(r, lambda m: status.update(f"{r.port}: {m}")))
        res = results[0]
        if res.outcome is None:
            raise fail(f"{res.error}", 1)
        _report_one(res.outcome, selftest)
    else:
        results = _run_batch(rows, one, parallel)
    if any(r.outcome is not None and r.outcome.new_secret for r in results):
        _refresh_broker(broker_dir, reg)  # the broker must learn the new secrets
    if not all(r.ok or (not selftest and r.outcome is not None) for r in results):
        raise typer.Exit(1)


def _report_one(out, selftest: bool) -> None:  # type: ignore[no-untyped-def]
    ident = "new identity" if out.new_identity else "kept its identity"
    console.print(f"Node [bold]{out.device_id}[/] {ident}; uploaded {len(out.uploaded)} files, "
                  f"{len(out.unchanged)} unchanged, removed {len(out.removed)} stale.")
    for note in out.notes:
        console.print(f"  note: {escape(note)}")
    if not selftest:
        console.print("[yellow]self-test skipped[/]")
        return
    console.print(_selftest_table(out))
    if out.ok:
        console.print("[green bold]PASS[/]: label the node with its id and mount it.")
    else:
        names = ", ".join(c.name for c in out.selftest.failed) or "self-test"
        console.print(f"[red bold]FAIL[/] ({names}): see docs/provisioning.md, 'When a check fails'; "
                      "fix it and re-run the same command (the node keeps its id).")


def _run_batch(rows, one, parallel: bool):  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kerbside.provisioning import batch as batchmod

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("provisioning", total=len(rows))

        def say_for(row: batchmod.Row) -> Callable[[str], None]:
            return lambda m: progress.update(task, description=f"{row.port}: {m}"[:70])

        results = batchmod.run(rows, lambda r: one(r, say_for(r)), on_done=lambda _r: progress.advance(task),
                               parallel=parallel)
    t = Table(title="Batch summary", title_justify="left")
    for col in ("line", "port", "site", "device", "result", "detail"):
        t.add_column(col, overflow="fold")
    for r in results:
        if r.outcome is None:
            verdict, detail, dev = "[red]ERROR[/]", escape(r.error), ""
        else:
            dev = r.outcome.device_id
            failed = r.outcome.selftest.failed if r.outcome.selftest else []
            verdict = "[green]PASS[/]" if r.ok else "[red]FAIL[/]"
            detail = escape(", ".join(f"{c.name}: {c.detail}" for c in failed))
        t.add_row(str(r.row.line), escape(r.row.port), escape(r.row.spec.site), dev, verdict, detail)
    console.print(t)
    ok = sum(r.ok for r in results)
    console.print(f"{ok} of {len(results)} nodes passed." + ("" if ok == len(results) else
                  " Fix the failed ones and re-run the batch: passed nodes keep their ids and are only re-checked."))
    return results


# --- registry ----------------------------------------------------------------------------------------

registry_app = typer.Typer(help="The device registry: list nodes, show one, decommission or rotate its secret.",
                           no_args_is_help=True)


@registry_app.command("list")
def registry_list(
    registry: RegistryOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Include decommissioned nodes.")] = False,
) -> None:
    """List the nodes in the registry (active ones unless --all)."""
    from kerbside.core.registry import RegistryError

    try:
        devices = _registry(registry).load()
    except RegistryError as e:
        raise fail(str(e)) from None
    t = Table()
    for col in ("id", "kit", "site", "zone", "status", "credential", "updated"):
        t.add_column(col)
    shown = [d for d in devices.values() if all_ or d.active]
    for d in sorted(shown, key=lambda d: (d.site, d.id)):
        t.add_row(d.id, d.kit, escape(d.site), escape(d.zone), d.status, str(d.credential), d.updated)
    console.print(t)
    console.print(f"{len(shown)} shown, {sum(d.active for d in devices.values())} active of {len(devices)}.")


@registry_app.command("show")
def registry_show(device_id: Annotated[str, typer.Argument(help="8-hex device id.")], registry: RegistryOpt = None) -> None:
    """Everything the registry knows about one node (the secret itself is never stored, only its hash)."""
    d = _registry(registry).get(device_id)
    if d is None:
        raise fail(f"{device_id} is not in the registry; `kerbside registry list --all` shows every node", 1)
    t = Table(show_header=False)
    for k, v in (("id", d.id), ("kit", d.kit), ("site", d.site), ("zone", d.zone), ("lat, lon", f"{d.lat}, {d.lon}"),
                 ("status", d.status), ("credential", str(d.credential)),
                 ("secret", "set (hash only)" if d.password_hash else "none: the broker refuses this node"),
                 ("created", d.created), ("updated", d.updated), *((k, v) for k, v in sorted(d.extra.items()))):
        t.add_row(escape(k), escape(v))
    console.print(t)


@registry_app.command("decommission")
def registry_decommission(
    device_id: Annotated[str, typer.Argument(help="8-hex device id.")],
    reason: Annotated[str, typer.Option(help="Why (stolen, broken, replaced by <id>): kept in the registry.")] = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    registry: RegistryOpt = None,
    broker_dir: BrokerDirOpt = None,
) -> None:
    """Retire a node for good: the broker refuses it after reload, the collector rejects its data.

    The id is never reused. To replace a node at the same site, provision the new
    one with the same --site, then decommission the old id.
    """
    from kerbside.provisioning.fleet import FleetError, decommission
    from kerbside.provisioning.identity import IdentityError

    if not yes:
        typer.confirm(f"Decommission {device_id}? It cannot be re-activated", abort=True)
    reg = _registry(registry)
    try:
        d = decommission(reg, device_id, reason)
    except (FleetError, IdentityError) as e:
        raise fail(str(e), 1) from None
    console.print(f"{d.id} ({escape(d.site)}) decommissioned.")
    _refresh_broker(broker_dir, reg)


@registry_app.command("rotate")
def registry_rotate(
    device_id: Annotated[str, typer.Argument(help="8-hex device id.")],
    registry: RegistryOpt = None,
    broker_dir: BrokerDirOpt = None,
) -> None:
    """Replace a node's secret: its old one stops working at the next broker reload.

    The new secret is not shown; re-provision the node (same command as before,
    it keeps its id) to give it the new one. Until then the broker refuses it.
    """
    from kerbside.provisioning.fleet import FleetError, rotate
    from kerbside.provisioning.identity import IdentityError

    reg = _registry(registry)
    try:
        d, _secret = rotate(reg, device_id)
    except (FleetError, IdentityError) as e:
        raise fail(str(e), 1) from None
    console.print(f"{d.id} now on credential {d.credential}. Next: plug it in and run "
                  f"[bold]kerbside provision --kit {d.kit} --site \"{escape(d.site)}\"[/] to give it the new secret.")
    _refresh_broker(broker_dir, reg)


# --- broker-config -----------------------------------------------------------------------------------


def broker_config_cmd(
    host: Annotated[list[str] | None, typer.Option("--host", help="Name or IP nodes dial; repeat for several. Goes into "
                                                   "the broker's TLS certificate.")] = None,
    out: Annotated[Path, typer.Option("--out", envvar=ENV_BROKER_DIR, help="Directory to write config, password file, "
                                      "ACL and certificates to.")] = Path("broker"),
    state_dir: Annotated[Path, typer.Option(help="Mosquitto persistence directory.")] = Path("/var/lib/mosquitto"),
    tls_port: Annotated[int, typer.Option(help="TLS listener for nodes.")] = 8883,
    plain_port: Annotated[int, typer.Option(help="Loopback-only listener for the collector on the same host.")] = 1883,
    fleet_size: Annotated[int | None, typer.Option(help="Nodes to size queues for (default: active nodes in the "
                                                   "registry; give the planned size before a roll-out).")] = None,
    ca_cert: Annotated[Path | None, typer.Option(help="The city's CA certificate (instead of a kerbside CA).")] = None,
    ca_key: Annotated[Path | None, typer.Option(help="The city's CA key, to issue the broker certificate from.")] = None,
    server_cert: Annotated[Path | None, typer.Option(help="A broker certificate the city issued (with --server-key, "
                                                     "--ca-cert).")] = None,
    server_key: Annotated[Path | None, typer.Option(help="Its private key.")] = None,
    registry: RegistryOpt = None,
) -> None:
    """Render the Mosquitto configuration from the registry: TLS, per-node passwords, ACL, queue limits.

    Re-run after every provision, decommission or rotation, then reload mosquitto
    (SIGHUP). The CA, server key and collector secret are kept across runs.

    Example:

      kerbside broker-config --host mqtt.city.example --out /etc/mosquitto/kerbside
    """
    from kerbside.core.registry import RegistryError
    from kerbside.provisioning import broker
    from kerbside.provisioning.broker_dir import BrokerDir, write_all
    from kerbside.provisioning.pki import PkiError

    if not host:
        raise fail("pass --host with the name nodes use to reach the broker (e.g. --host mqtt.city.example); "
                   "it must match [mqtt] host in the depot profile")
    d = BrokerDir(out)
    try:
        devices = _registry(registry).load()
        done = write_all(d, devices, host, state_dir, tls_port=tls_port, plain_port=plain_port, fleet_size=fleet_size,
                         city_ca=ca_cert, city_ca_key=ca_key, server_cert=server_cert, server_key=server_key)
    except (RegistryError, PkiError, OSError) as e:
        raise fail(str(e)) from None
    active = sum(dev.active for dev in devices.values())
    t = Table(title=f"Broker config in {out}", title_justify="left")
    t.add_column("file")
    t.add_column("mode")
    t.add_column("what")
    f = d.files
    for path, what in ((d.conf, "mosquitto.conf: include it or point mosquitto -c at it"),
                       (f.password_file, f"{active} active nodes + collector"), (f.acl_file, "per-node topic rules"),
                       (f.cafile, "CA: nodes get this as /ca.pem"), (f.certfile, "broker certificate"),
                       (f.keyfile, "broker key"), (d.collector_secret, "collector's MQTT password"),
                       *(((d.ca_key, "CA private key: move it offline"),) if d.ca_key.exists() else ())):
        t.add_row(str(path), f"{path.stat().st_mode & 0o777:04o}", what)
    console.print(t)
    console.print(f"{escape(done)}. Queue limit {broker.queue_limit(fleet_size if fleet_size is not None else active)} messages.")
    console.print(f"Mosquitto runs as user mosquitto: `chown mosquitto {f.password_file} {f.keyfile}` if you rendered as "
                  f"another user. Then {broker.RELOAD_HINT}.")


def register(app: typer.Typer) -> None:
    app.command("flash")(flash_cmd)
    app.command("provision")(provision_cmd)
    app.add_typer(registry_app, name="registry")
    app.command("broker-config")(broker_config_cmd)
