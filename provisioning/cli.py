"""`kerbside flash | provision | registry | broker-config`: the technician's and operator's commands.

Heavy imports (esptool, serial, cryptography) happen inside the commands so
`kerbside --help` stays instant. Every error ends with what to do next, and
no command ever prints a node secret or a Wi-Fi key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kerbside.core import options
from kerbside.core.options import ConfigOpt

console = Console()
err = Console(stderr=True)

RegistryOpt = Annotated[Path | None, typer.Option(
    "--registry", help="Device registry file, shared with the collector (registry.path; default "
    "./kerbside-registry.json).", show_default=False)]
BrokerDirOpt = Annotated[Path | None, typer.Option(
    "--broker-dir", help="Broker directory written by `kerbside broker-config` (broker.dir); when set, its "
    "password file is re-rendered right away.", show_default=False)]


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _registry(cfg):  # type: ignore[no-untyped-def]
    from kerbside.core.registry import Registry

    return Registry(cfg.registry.or_default())


def _broker_dir(cfg) -> Path | None:  # type: ignore[no-untyped-def]
    return Path(cfg.broker.dir) if cfg.broker.dir else None


def _refresh_broker(cfg, registry) -> None:  # type: ignore[no-untyped-def]
    from kerbside.provisioning.broker import RELOAD_HINT
    from kerbside.provisioning.broker_dir import BrokerDir, render_nodes

    broker_dir = _broker_dir(cfg)
    if broker_dir is None:
        console.print("Next: re-render the broker's password file with [bold]kerbside broker-config[/] (or pass "
                      f"--broker-dir), then {RELOAD_HINT}.")
        return
    render_nodes(BrokerDir(broker_dir), registry.load(), cfg.broker.system_user)
    console.print(f"Re-rendered {broker_dir / 'passwd'}. Now {RELOAD_HINT}.")


# --- flash -------------------------------------------------------------------------------------------


def flash_cmd(
    port: Annotated[str | None, typer.Option("--port", "-p", help="Serial port, e.g. /dev/ttyUSB0. Found automatically "
                                             "when exactly one USB serial device is plugged in.")] = None,
    firmware: Annotated[Path | None, typer.Option("--firmware", "-f", help="MicroPython 1.27 .bin for the board, "
                                                  "ESP32_GENERIC from micropython.org/download (firmware.image).",
                                                  show_default=False)] = None,
    baud: Annotated[int, typer.Option(help="Fastest baud rate to try; lowered by itself when the USB link is flaky.")] = 460800,
    erase: Annotated[bool, typer.Option(help="Erase the whole flash first (removes any old config and secrets).")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show esptool's own messages and warnings.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Put MicroPython on a node: detect the chip, erase, write, verify, reset.

    Plug the node into USB. Most boards enter the bootloader by themselves; if
    yours does not, hold BOOT (IO0), tap EN (RST), release BOOT, and run this again.

    Next step: kerbside provision --kit air --site "..."
    """
    from kerbside.provisioning.flash import flash
    from kerbside.provisioning.ports import choose

    cfg = options.load(config, firmware__image=firmware)
    if not cfg.firmware.image:
        raise fail("which firmware? pass --firmware ESP32_GENERIC-v1.27.0.bin (or set KERBSIDE_FIRMWARE_IMAGE); download "
                   "it from https://micropython.org/download/ESP32_GENERIC/")
    chosen = choose(port)
    with console.status(f"flashing {chosen}") as status:
        done = flash(chosen, Path(cfg.firmware.image), baud=baud, erase=erase, say=lambda m: status.update(m),
                     verbose=verbose)
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


def provision_cmd(
    kit: Annotated[str | None, typer.Option(help="What the node measures: air or traffic. Needed for a new node; a "
                                            "provisioned one keeps its own unless you change it.")] = None,
    site: Annotated[str | None, typer.Option(help="Where it is mounted, as analysts will search for it "
                                             "(e.g. 'Ringstrasse 12 north lamp post'). Needed for a new node.")] = None,
    zone: Annotated[str | None, typer.Option(help="Zone tag, e.g. lez-inner or control ('' clears it).",
                                             show_default=False)] = None,
    lat: Annotated[float | None, typer.Option(help="Latitude (WGS84), with --lon.")] = None,
    lon: Annotated[float | None, typer.Option(help="Longitude (WGS84), with --lat.")] = None,
    port: Annotated[str | None, typer.Option("--port", "-p", help="Serial port; found automatically when only one "
                                             "USB serial device is plugged in.")] = None,
    batch: Annotated[Path | None, typer.Option(help="CSV with columns port,kit,site,zone,lat,lon: provision every row; "
                                               "a failed node does not stop the rest. Rows on one port (or no port "
                                               "column and --port): plug in one node after another.")] = None,
    parallel: Annotated[bool, typer.Option(help="With --batch: provision nodes on different ports at the same time "
                                           "(a USB hub full of nodes).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before changing what the registry says about a "
                                      "node (the changes are still shown).")] = False,
    config: ConfigOpt = None,
    broker_host: Annotated[str | None, typer.Option(help="Broker host name nodes dial (node.broker_host).",
                                                    show_default=False)] = None,
    broker_port: Annotated[int | None, typer.Option(help="Broker TLS port (node.broker_port).", show_default=False)] = None,
    ca: Annotated[Path | None, typer.Option(help="CA certificate nodes trust (node.ca).", show_default=False)] = None,
    wifi_ssid: Annotated[str | None, typer.Option(help="Wi-Fi network tried first (node.wifi_ssid); its key is read from "
                                                  "$KERBSIDE_NODE_WIFI_PSK, never from the command line.",
                                                  show_default=False)] = None,
    new_identity: Annotated[bool, typer.Option(help="Give the node a new id and secret; its old id is decommissioned.")] = False,
    selftest: Annotated[bool, typer.Option(help="Run the on-node self-test (Wi-Fi, broker, first reading).")] = True,
    firmware_dir: Annotated[Path | None, typer.Option(help="Firmware source tree (with knode/ and main.py) to upload "
                                                      "instead of the one shipped with kerbside.")] = None,
    registry: RegistryOpt = None,
    broker_dir: BrokerDirOpt = None,
    label: Annotated[Path | None, typer.Option("--label", help="Write each node's printable label (PNG with a QR code "
                                               "of its id and site) into this directory as <id>.png.",
                                               show_default=False)] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Append a row per node to this file: id, new or kept "
                                                "identity, kit, site, firmware hash, config version, each self-test "
                                                "check, time taken (.csv: CSV, else JSON lines).",
                                                show_default=False)] = None,
) -> None:
    """Give a node its identity, config, CA and firmware, then prove it works.

    What every node gets (Wi-Fi, broker, CA, timing) is the [node] section of the settings: the depot
    profile (docs/configuration.md). Safe to re-run: a provisioned node keeps its id and secret, and
    what the registry says about it unless a flag changes it (the changes are shown and confirmed first);
    only changed files are uploaded. Exit status 0 when every self-test check passed, 1 when a node failed,
    2 on a usage error (nothing was touched).

    Example:

      kerbside provision --kit air --site "Ringstrasse 12" --zone lez-inner --lat 48.2 --lon 16.37

      kerbside provision --batch nodes.csv --parallel --label labels/ --report depot-log.csv

    Then watch the node come online where it is mounted: kerbside fleet watch ID --until-reading
    """
    from kerbside.core.errors import ConfigError, KerbsideError
    from kerbside.provisioning import batch as batchmod
    from kerbside.provisioning.bundle import FIRMWARE, build
    from kerbside.provisioning.node_config import NodeSpec, Profile
    from kerbside.provisioning.ports import choose
    from kerbside.provisioning.provision import provision

    cfg = options.load(config, registry__path=registry, broker__dir=broker_dir, node__broker_host=broker_host,
                       node__broker_port=broker_port, node__ca=ca, node__wifi_ssid=wifi_ssid)
    reg = _registry(cfg)
    broker_dir = _broker_dir(cfg)
    try:
        prof = Profile.from_settings(cfg.node).check()
        if batch is not None:
            if kit or site or zone is not None or lat is not None:
                raise ConfigError("--batch takes kit, site, zone and location from the CSV; drop those flags")
            rows = batchmod.parse(batch, port)
            if parallel and batchmod.shared_ports(rows):
                raise ConfigError(f"rows share ports ({', '.join(sorted(batchmod.shared_ports(rows)))}): one board after "
                                  "another cannot go in parallel; drop --parallel, or give each row its own port")
        else:
            spec = NodeSpec(kit=kit, site=site, zone=zone, lat=lat, lon=lon).check()
            rows = [batchmod.Row(0, choose(port), spec)]
        from kerbside.provisioning import outputs

        record = outputs.Outputs(label, report)  # checks the report file before the compile
        with console.status("compiling firmware with mpy-cross"):
            firmware = build(firmware_dir or FIRMWARE)
        record.firmware = outputs.firmware_hash(firmware)
    except KerbsideError as e:  # no node touched yet: a usage error (exit 2), whatever went wrong
        raise ConfigError(str(e)) from e

    def registered() -> None:
        if broker_dir is not None:
            from kerbside.provisioning.broker_dir import BrokerDir, render_nodes

            render_nodes(BrokerDir(broker_dir), reg.load(), cfg.broker.system_user)

    live: list = []  # the spinner or progress bar on screen, paused while the technician is asked something

    def ask(question: str, changes: list[str] = ()) -> str:  # type: ignore[assignment]
        for display in live:
            display.stop()
        try:
            for c in changes:
                console.print(f"  {escape(c)}")
            return console.input(question)
        finally:
            for display in live:
                display.start()

    def confirm(changes: list[str]) -> bool:
        console.print("Re-provisioning changes:")
        if yes:
            for c in changes:
                console.print(f"  {escape(c)}")
            return True
        try:
            return ask("Write these changes? [y/N] ", changes).strip().lower() in ("y", "yes")
        except EOFError:
            return False

    def next_node(row: batchmod.Row, why: str) -> None:
        if why:
            err.print(f"[yellow]{escape(why)}[/]", highlight=False)
        try:
            answer = ask(f"Line {row.line} ({escape(row.spec.site or '')}): plug the next node into {escape(row.port)} "
                         "and press Enter (or type stop) ")
        except EOFError:
            raise batchmod.NoNextNode(f"line {row.line}: no next node (no answer from the keyboard)") from None
        if answer.strip().lower() == "stop":
            raise batchmod.NoNextNode(f"line {row.line}: the batch was stopped")

    def one(row: batchmod.Row, seen: batchmod.Seen, say: Callable[[str], None]):  # type: ignore[no-untyped-def]
        return record.around(row, lambda: provision(row.port, row.spec, prof, reg, firmware, new_identity=new_identity,
                                                    run_selftest=selftest, say=say, registered=registered,
                                                    confirm=confirm, refuse=seen))

    if batch is None:
        with console.status("provisioning") as status:
            live.append(status)
            results = batchmod.run(rows, lambda r, seen: one(r, seen, lambda m: status.update(f"{r.port}: {m}")))
        res = results[0]
        if res.outcome is None:
            raise fail(f"{res.error}", res.exit_code)
        _report_one(res.outcome, selftest)
    else:
        results = _run_batch(rows, one, parallel, next_node, live)
        if record.labels:
            console.print(f"{len(record.labels)} labels in {label} (<id>.png, print at 300 dpi).")
    if report is not None:
        console.print(f"Recorded in {report}.")
    if any(r.outcome is not None and r.outcome.new_secret for r in results):
        _refresh_broker(cfg, reg)  # the broker must learn the new secrets
    if not all(r.ok or (not selftest and r.outcome is not None) for r in results):
        raise typer.Exit(1)


def _report_one(out, selftest: bool) -> None:  # type: ignore[no-untyped-def]
    ident = "new identity" if out.new_identity else "kept its identity"
    console.print(f"Node [bold]{out.device_id}[/] {ident}; uploaded {len(out.uploaded)} files, "
                  f"{len(out.unchanged)} unchanged, removed {len(out.removed)} stale.")
    for change in out.changes:
        console.print(f"  changed: {escape(change)}")
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


def _run_batch(rows, one, parallel: bool, next_node, live: list):  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kerbside.provisioning import batch as batchmod

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        live.append(progress)
        task = progress.add_task("provisioning", total=len(rows))

        def say_for(row: batchmod.Row) -> Callable[[str], None]:
            return lambda m: progress.update(task, description=f"{row.port}: {m}"[:70])

        results = batchmod.run(rows, lambda r, seen: one(r, seen, say_for(r)), on_done=lambda _r: progress.advance(task),
                               parallel=parallel, next_node=next_node)
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
        t.add_row(str(r.row.line), escape(r.row.port), escape(r.row.spec.site or ""), dev, verdict, detail)
    console.print(t)
    ok = sum(r.ok for r in results)
    ids = {r.outcome.device_id for r in results if r.outcome is not None}
    console.print(f"{ok} of {len(results)} nodes passed ({len(ids)} distinct boards)." + ("" if ok == len(results) else
                  " Fix the failed ones and re-run the batch: passed nodes keep their ids and are only re-checked."))
    return results


# --- registry ----------------------------------------------------------------------------------------

registry_app = typer.Typer(help="The device registry: list nodes, show one, decommission or rotate its secret.",
                           no_args_is_help=True)


@registry_app.command("list")
def registry_list(
    registry: RegistryOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Include decommissioned nodes.")] = False,
    config: ConfigOpt = None,
) -> None:
    """List the nodes in the registry (active ones unless --all)."""
    devices = _registry(options.load(config, registry__path=registry)).load()
    t = Table()
    for col in ("id", "kit", "site", "zone", "status", "credential", "updated"):
        t.add_column(col)
    shown = [d for d in devices.values() if all_ or d.active]
    for d in sorted(shown, key=lambda d: (d.site, d.id)):
        t.add_row(d.id, d.kit, escape(d.site), escape(d.zone), d.status, str(d.credential), d.updated)
    console.print(t)
    console.print(f"{len(shown)} shown, {sum(d.active for d in devices.values())} active of {len(devices)}.")


@registry_app.command("show")
def registry_show(device_id: Annotated[str, typer.Argument(help="8-hex device id.")], registry: RegistryOpt = None,
                  config: ConfigOpt = None) -> None:
    """Everything the registry knows about one node (the secret itself is never stored, only its hash)."""
    d = _registry(options.load(config, registry__path=registry)).get(device_id)
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
    config: ConfigOpt = None,
) -> None:
    """Retire a node for good: the broker refuses it after reload, the collector rejects its data.

    The id is never reused. To replace a node at the same site, provision the new
    one with the same --site, then decommission the old id.
    """
    from kerbside.provisioning.fleet import decommission

    cfg = options.load(config, registry__path=registry, broker__dir=broker_dir)
    if not yes:
        typer.confirm(f"Decommission {device_id}? It cannot be re-activated", abort=True)
    reg = _registry(cfg)
    d = decommission(reg, device_id, reason)
    console.print(f"{d.id} ({escape(d.site)}) decommissioned.")
    _refresh_broker(cfg, reg)


@registry_app.command("rotate")
def registry_rotate(
    device_id: Annotated[str, typer.Argument(help="8-hex device id.")],
    registry: RegistryOpt = None,
    broker_dir: BrokerDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Replace a node's secret: its old one stops working at the next broker reload.

    The new secret is not shown; re-provision the node (same command as before,
    it keeps its id) to give it the new one. Until then the broker refuses it.
    """
    from kerbside.provisioning.fleet import rotate

    cfg = options.load(config, registry__path=registry, broker__dir=broker_dir)
    reg = _registry(cfg)
    d, _secret = rotate(reg, device_id)
    console.print(f"{d.id} now on credential {d.credential}. Next: plug it in and run [bold]kerbside provision[/] to "
                  "give it the new secret (it keeps its id, kit, site, zone and location).")
    _refresh_broker(cfg, reg)


# --- broker-config -----------------------------------------------------------------------------------


def _findings_table(title: str, findings) -> Table:  # type: ignore[no-untyped-def]
    t = Table(title=title, title_justify="left")
    for col in ("", "what", "detail"):
        t.add_column(col, overflow="fold")
    marks = {"ok": "[green]OK[/]", "warn": "[yellow]WARN[/]", "error": "[red]ERROR[/]"}
    for f in findings:
        t.add_row(marks[f.level], escape(f.subject), escape(f.detail))
    return t


def broker_config_cmd(
    host: Annotated[list[str] | None, typer.Option("--host", help="Name or IP nodes dial; repeat for several. Goes into "
                                                   "the broker's TLS certificate (broker.hosts).", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Directory to write config, password files, ACLs and "
                                             "certificates to (broker.dir; default ./broker).", show_default=False)] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Mosquitto persistence directory (broker.state_dir).",
                                                   show_default=False)] = None,
    tls_port: Annotated[int | None, typer.Option(help="TLS listener for nodes (broker.tls_port).", show_default=False)] = None,
    plain_port: Annotated[int | None, typer.Option(help="Internal listener for collectors and the operator "
                                                   "(broker.plain_port).", show_default=False)] = None,
    fleet_size: Annotated[int | None, typer.Option(help="Nodes to size queues for (broker.fleet_size; default: active "
                                                   "nodes in the registry; give the planned size before a roll-out).",
                                                   show_default=False)] = None,
    ca_cert: Annotated[Path | None, typer.Option(help="The city's CA certificate, instead of a kerbside CA "
                                                 "(broker.ca_cert).", show_default=False)] = None,
    ca_key: Annotated[Path | None, typer.Option(help="The CA's private key, wherever you keep it offline: needed to issue "
                                                "or renew the broker certificate (broker.ca_key).", show_default=False)] = None,
    server_cert: Annotated[Path | None, typer.Option(help="A broker certificate the city issued, with --server-key "
                                                     "(broker.server_cert).", show_default=False)] = None,
    server_key: Annotated[Path | None, typer.Option(help="Its private key (broker.server_key).", show_default=False)] = None,
    apply: Annotated[bool, typer.Option("--apply", help="After writing: check that mosquitto can read every file and "
                                        "accepts the config, reload it (SIGHUP to broker.pid_file) and confirm the "
                                        "collector is connected again.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Write nothing: report certificate expiry, CA/certificate "
                                        "mismatch, files mosquitto cannot read, and try the config. Exit 1 when "
                                        "something needs doing.")] = False,
    engine: Annotated[str | None, typer.Option("--engine", help="mosquitto (one broker) or rabbitmq (a cluster: "
                                               "node config, definitions with accounts, permissions and the "
                                               "collectors' queue; docs/scaling.md) (broker.engine).",
                                               show_default=False)] = None,
    registry: RegistryOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Render the Mosquitto configuration from the registry: TLS, accounts, ACLs, queue and size limits.

    Re-run after every provision, decommission or rotation, with --apply to check, reload and confirm.
    The CA is never replaced; the broker certificate is renewed from it before it expires (pass --ca-key
    when the CA key is kept offline); the accounts' secrets are kept. The broker's in-flight window and
    session expiry follow the [mqtt] settings of the collector, so give it the collector's settings file.

    Example:

      kerbside broker-config -c /etc/kerbside/collector.toml --host mqtt.city.example --out /etc/mosquitto/kerbside --apply

    With --engine rabbitmq it renders a RabbitMQ cluster's rabbitmq.conf and definitions.json instead (the same
    accounts, confined by permissions), and --apply imports the definitions with rabbitmqctl on a cluster node.
    """
    from kerbside.core.errors import ConfigError
    from kerbside.provisioning import broker
    from kerbside.provisioning import broker_apply as ba
    from kerbside.provisioning.broker_dir import BrokerDir, write_all

    cfg = options.load(config, broker__hosts=host, broker__dir=out, broker__state_dir=state_dir, broker__tls_port=tls_port,
                       broker__plain_port=plain_port, broker__fleet_size=fleet_size, broker__ca_cert=ca_cert,
                       broker__ca_key=ca_key, broker__server_cert=server_cert, broker__server_key=server_key,
                       registry__path=registry, broker__engine=engine)
    b = cfg.broker
    d = BrokerDir(Path(b.dir or "broker"))
    if b.engine == "rabbitmq":
        _rabbitmq_config(cfg, d, check, apply)
        return
    if check:
        if not d.conf.exists():
            raise fail(f"no broker configuration in {d.root}: run broker-config without --check first", 1)
        findings = ba.check_certs(d, b.hosts) + ba.check_access(d, b) + ba.trial_run(d, b)
        console.print(_findings_table(f"Broker in {d.root}", findings))
        if any(f.level != "ok" for f in findings):
            raise typer.Exit(1)
        return
    if not b.hosts:
        raise fail("pass --host with the name nodes use to reach the broker (e.g. --host mqtt.city.example); "
                   "it must match [node] broker_host in the depot's settings")
    devices = _registry(cfg).load()
    try:
        tls = write_all(d, devices, b, cfg.mqtt)
    except OSError as e:  # a certificate or key named in the settings is missing, or --out is not writable
        raise ConfigError(str(e)) from e
    active = sum(dev.active for dev in devices.values())
    accounts = broker.Accounts.from_settings(b)
    t = Table(title=f"Broker config in {d.root}", title_justify="left")
    for col in ("file", "owner", "mode", "what"):
        t.add_column(col)
    f = d.files
    for path, what in ((d.conf, "mosquitto.conf: point mosquitto -c at it"),
                       (f.password_file, f"{active} active nodes"), (f.acl_file, "each node: its own topics"),
                       (f.internal_password_file, ", ".join(accounts.all)),
                       (f.internal_acl_file, "collectors read, the operator commands"),
                       (f.cafile, "CA: nodes get this as /ca.pem"), (f.certfile, "broker certificate"),
                       (f.keyfile, "broker key"),
                       *((d.secret_file(a), "collector's mqtt.password" if a in accounts.ingest else "operator's password")
                         for a in accounts.all),
                       *(((d.ca_key, "CA private key: move it offline"),) if d.ca_key.exists() else ())):
        st = path.stat()
        t.add_row(str(path), ba.describe(st).split()[0], f"{st.st_mode & 0o777:04o}", what)
    console.print(t)
    n = b.fleet_size or active
    console.print(f"{escape(str(tls))}. Queue limit {broker.queue_limit(n)} messages, "
                  f"{broker.queue_bytes(broker.queue_limit(n)) // 2**20} MiB; packets up to {broker.MAX_PACKET} bytes.")
    for w in tls.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    for name in accounts.ingest:
        console.print(f"Collector settings: mqtt.username = mqtt.client_id = {name} (the broker makes the client id the "
                      f"user name), mqtt.password from {d.secret_file(name).name}.")
    if not apply:
        console.print(f"Mosquitto runs as {b.system_user} and must read passwd, passwd.internal and server.key: files "
                      f"replaced here kept their owner and mode. Then {broker.RELOAD_HINT}.")
        return
    findings = ba.check_certs(d, b.hosts) + ba.check_access(d, b) + ba.trial_run(d, b)
    if any(x.level == "error" for x in findings):
        console.print(_findings_table("Checks before the reload", findings))
        raise fail("not reloaded: the running broker keeps its previous files in memory until it is reloaded or "
                   "restarted, so fix the errors above and run broker-config --apply again", 1)
    pid = ba.reload(Path(b.pid_file))
    after = [ba.confirm_operator(d, b), ba.confirm_collector(cfg.http)]
    console.print(_findings_table(f"Reloaded mosquitto (pid {pid})", findings + after))
    if any(x.level == "error" for x in after):
        raise typer.Exit(1)


def _rabbitmq_config(cfg, d: Path, check: bool, apply: bool) -> None:  # type: ignore[no-untyped-def]
    from kerbside.core.errors import ConfigError
    from kerbside.provisioning import broker, rabbitmq
    from kerbside.provisioning import broker_apply as ba

    b = cfg.broker
    if check:
        raise fail("--check tries a Mosquitto config; on a RabbitMQ node use `rabbitmq-diagnostics status` and "
                   "`rabbitmqctl cluster_status`", 2)
    if not b.hosts:
        raise fail("pass --host with every name nodes use to reach the cluster's nodes (repeat --host); they go "
                   "into the broker certificate every node serves")
    devices = _registry(cfg).load()
    try:
        w = rabbitmq.write_all(d, devices, b, cfg.amqp)
    except OSError as e:
        raise ConfigError(str(e)) from e
    accounts = broker.Accounts.from_settings(b)
    t = Table(title=f"RabbitMQ cluster config in {d.root}", title_justify="left")
    for col in ("file", "owner", "mode", "what"):
        t.add_column(col)
    f = d.files
    for path, what in ((w.conf, f"rabbitmq.conf of every node ({', '.join(b.cluster_nodes)})"),
                       (w.plugins, "enabled_plugins: the MQTT plugin"),
                       (w.definitions, f"{w.nodes} nodes, {', '.join(accounts.all)}, queue {cfg.amqp.queue}"),
                       (f.cafile, "CA: nodes get this as /ca.pem"), (f.certfile, "broker certificate (every node)"),
                       (f.keyfile, "broker key"),
                       *((d.secret_file(a), "collector's amqp.password" if a in accounts.ingest else "operator's password")
                         for a in accounts.all)):
        st = path.stat()
        t.add_row(str(path), ba.describe(st).split()[0], f"{st.st_mode & 0o777:04o}", what)
    console.print(t)
    console.print(f"{escape(str(w.tls))}. Messages up to {rabbitmq.MAX_MESSAGE} bytes; queue {cfg.amqp.queue} holds up to "
                  f"{broker.queue_limit(b.fleet_size or w.nodes)} messages.")
    for warning in w.tls.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if w.without_hash:
        err.print(f"[yellow]warning:[/] {len(w.without_hash)} active nodes have no RabbitMQ credential (provisioned before "
                  f"kerbside kept one): {', '.join(w.without_hash[:10])}{' ...' if len(w.without_hash) > 10 else ''}. "
                  "`kerbside registry rotate ID` and re-provision each to move it to the cluster.", highlight=False)
    for name in accounts.ingest:
        console.print(f"Collector settings: collector.source = amqp, amqp.username = {name}, amqp.password from "
                      f"{d.secret_file(name).name}, amqp.urls = every node's amqp://host:{b.amqp_port}.")
    if not apply:
        console.print("Copy the directory to every node, point RABBITMQ_CONFIG_FILE at rabbitmq.conf and "
                      "RABBITMQ_ENABLED_PLUGINS_FILE at enabled_plugins, then run this again with --apply on one node.")
        return
    import json

    try:
        done = rabbitmq.apply(rabbitmq.rabbitmqctl(), str(w.definitions), json.loads(w.definitions.read_text()), accounts)
    except rabbitmq.RabbitError as e:
        raise fail(f"not applied: {e}", 1) from e
    console.print(f"Applied: {done.imported} accounts, their permissions, queue {cfg.amqp.queue} and its bindings"
                  + (f"; deleted {', '.join(done.deleted)}" if done.deleted else "") + ".")


def register(app: typer.Typer) -> None:
    app.command("flash")(flash_cmd)
    app.command("provision")(provision_cmd)
    app.add_typer(registry_app, name="registry")
    app.command("broker-config")(broker_config_cmd)
