"""Provision one node: identity, config, CA and firmware onto the board, then its self-test.

Idempotent by design: the node's own /config.json is the memory of what it
is, so re-running on a provisioned node keeps its id (and its secret, if the
registry still accepts it) and only uploads files whose hash differs. What the
registry says about the node (kit, site, zone, location) is kept unless a flag
changes it, and a change is shown for confirmation before anything is
written. The registry entry is written before the node's config, and removed
again if the config never reached the node, so an interrupted run leaves no
orphan. The board is restarted before its self-test, so the firmware just
installed is the one tested, and no secret leaves in any message, whatever
its characters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kerbside.core.errors import ProvisioningError
from kerbside.core.registry import ACTIVE, Device, Registry
from kerbside.provisioning import node_config, release, selftest
from kerbside.provisioning.bundle import LIB, DeviceFile
from kerbside.provisioning.fleet import now_iso
from kerbside.provisioning.identity import new_device_id, new_secret
from kerbside.provisioning.passwd import PasswdError, clear_secret, set_secret, verify_password
from kerbside.provisioning.rawrepl import DeviceException, RawRepl

SELFTEST_TIMEOUT = 120.0
"""Joining Wi-Fi, NTP and the broker over TLS can take a minute on a weak signal."""

Progress = Callable[[str], None]


class ProvisionError(ProvisioningError, RuntimeError):
    pass


class SameBoardError(ProvisionError):
    """The board on the port was already provisioned in this batch: the technician has not plugged in the next one."""


class NotConfirmed(ProvisionError):
    """The technician did not confirm the changes shown: nothing was written."""


@dataclass
class Outcome:
    port: str
    device_id: str = ""
    new_identity: bool = False
    new_secret: bool = False
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    selftest: selftest.SelfTest | None = None
    notes: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    """What changed in the registry entry and the node's config of a node that kept its identity."""
    board: list[str] = field(default_factory=list)
    """What tells this board apart (its device id, its chip's unique id when it has one): a batch refuses it twice."""
    cfg: int = 0
    """Version of the config written to the node (`provision --report`)."""

    @property
    def ok(self) -> bool:
        return self.selftest is not None and self.selftest.ok


@dataclass
class _Identity:
    device_id: str
    password: str
    credential: int
    created: bool
    rotated: bool


def _kept(registry: Registry, existing: dict[str, Any] | None, new_identity: bool) -> Device | None:
    """The registry entry the node keeps, or None when it gets a new identity."""
    old_id = existing.get("device") if existing else None
    dev = registry.get(old_id) if isinstance(old_id, str) else None
    return dev if dev is not None and dev.status == ACTIVE and not new_identity else None


def _resolve_identity(registry: Registry, existing: dict[str, Any] | None, spec: node_config.NodeSpec,
                      new_identity: bool, notes: list[str]) -> _Identity:
    """Keep the node's id and secret when the registry still vouches for them; otherwise issue new ones.

    `spec` is complete here: merged over the registry entry for a node that keeps its identity.
    """
    old_id = existing.get("device") if existing else None
    old_pw = (existing.get("mqtt") or {}).get("password") if existing else None
    with registry.edit() as devices:
        dev = devices.get(old_id) if isinstance(old_id, str) else None
        if dev is not None and not new_identity and dev.status == ACTIVE:
            ident = _Identity(dev.id, str(old_pw or ""), dev.credential, created=False, rotated=False)
            try:
                valid = bool(old_pw) and bool(dev.password_hash) and verify_password(str(old_pw), dev.password_hash)
            except PasswdError:
                valid = False
            if not valid:
                ident.password = new_secret()
                ident.credential = dev.credential = dev.credential + 1
                set_secret(dev, ident.password)
                ident.rotated = True
                notes.append("the node's secret was not the registry's (rotated?): issued a new one")
            dev.kit, dev.site, dev.zone, dev.lat, dev.lon = spec.kit, spec.site, spec.zone, spec.lat, spec.lon  # type: ignore[assignment]
            dev.updated = now_iso()
            return ident
        if dev is not None and dev.status == ACTIVE and new_identity:
            dev.status, dev.updated = "decommissioned", now_iso()
            clear_secret(dev)
            dev.extra["decommission_reason"] = "re-provisioned with --new-identity"
            notes.append(f"old identity {dev.id} decommissioned (--new-identity)")
        elif dev is not None:
            notes.append(f"the node carried decommissioned identity {dev.id}: issued a new one")
        elif isinstance(old_id, str):
            notes.append(f"the node's id {old_id} is not in {registry.path}: issued a new one (wrong --registry?)")
        device_id = new_device_id(devices)
        password = new_secret()
        now = now_iso()
        devices[device_id] = dev = Device(id=device_id, kit=str(spec.kit), site=str(spec.site), zone=spec.zone or "",
                                          lat=spec.lat, lon=spec.lon, status=ACTIVE, created=now, updated=now, credential=1)
        set_secret(dev, password)
        return _Identity(device_id, password, 1, created=True, rotated=True)


def _forget(registry: Registry, device_id: str) -> None:
    with registry.edit() as devices:
        devices.pop(device_id, None)


def sync_files(repl: RawRepl, files: list[DeviceFile], out: Outcome, say: Progress) -> None:
    """Upload what differs, and drop stale modules: a leftover knode/x.py would shadow the new x.mpy."""
    wanted = {f.path for f in files}
    for f in files:
        if repl.sha256(f.path) == f.sha256:
            out.unchanged.append(f.path)
            continue
        say(f"uploading {f.path}")
        repl.write_file(f.path, f.data)
        out.uploaded.append(f.path)
    dirs = {p.rsplit("/", 1)[0] for p in wanted if p.startswith(LIB + "/")}
    for d in sorted(dirs):
        for name in repl.listdir(d):
            path = f"{d}/{name}"
            if name.endswith((".py", ".mpy")) and path not in wanted:
                repl.remove(path)
                out.removed.append(path)


UNIQUE_ID = ("try:\n    import machine, binascii\n    print(binascii.hexlify(machine.unique_id()).decode())\n"
             "except Exception:\n    print('-')\n")
"""The chip's own id (its MAC on an ESP32): tells boards apart even before they carry a config."""


def board_identity(repl: RawRepl, existing: dict[str, Any] | None) -> list[str]:
    out = []
    if existing and isinstance(existing.get("device"), str):
        out.append(f"device {existing['device']}")
    chip = repl.exec(UNIQUE_ID).strip()
    if chip and chip != "-":
        out.append(f"chip {chip}")
    return out


def provision(port: str, spec: node_config.NodeSpec, profile: node_config.Profile, registry: Registry,
              firmware: list[DeviceFile], *, new_identity: bool = False, run_selftest: bool = True,
              connect: Callable[[str], RawRepl] = RawRepl, say: Progress = lambda _m: None,
              registered: Callable[[], None] = lambda: None, confirm: Callable[[list[str]], bool] = lambda _c: True,
              refuse: Mapping[str, str] = {}) -> Outcome:
    """Provision the board on `port` and return what happened; errors that stop this node raise.

    `confirm` sees the changes to a known node's registry entry and config and may refuse them (nothing is
    written then). `refuse` maps board identities (Outcome.board) to where they were provisioned already, in
    this batch: such a board is refused before anything is written. `registered` runs once the registry and
    the node agree and before the self-test: the CLI re-renders the broker's password file there, so that a
    new node's broker check can pass on its first run.
    """
    spec.check()
    profile.check()
    hide = [w["psk"] for w in profile.wifi]
    try:
        return _provision(port, spec, profile, registry, firmware, new_identity, run_selftest, connect, say, registered,
                          confirm, refuse, hide)
    except Exception as e:
        # Whatever stopped us (a device traceback, a transfer error, a bug), its message names no secret.
        clean = [selftest.redact(str(a), hide) if isinstance(a, str) else a for a in e.args]
        if clean != list(e.args):
            e.args = tuple(clean)
        raise


def _provision(port: str, spec: node_config.NodeSpec, profile: node_config.Profile, registry: Registry,
               firmware: list[DeviceFile], new_identity: bool, run_selftest: bool, connect: Callable[[str], RawRepl],
               say: Progress, registered: Callable[[], None], confirm: Callable[[list[str]], bool],
               refuse: Mapping[str, str], hide: list[str]) -> Outcome:
    out = Outcome(port)
    say("connecting to the board")
    with connect(port) as repl:
        existing = node_config.parse_existing(repl.read_file(node_config.CONFIG_PATH))
        if existing and isinstance((existing.get("mqtt") or {}).get("password"), str):
            hide.append(existing["mqtt"]["password"])
        out.board = board_identity(repl, existing)
        seen = [refuse[b] for b in out.board if b in refuse]
        if seen:
            raise SameBoardError(f"this is the board already provisioned as {seen[0]} ({', '.join(out.board)}): plug in "
                                 "the next node")
        kept = _kept(registry, existing, new_identity)
        full = spec.over(kept) if kept is not None else spec.for_new_node()
        if kept is not None:
            preview = node_config.build(kept.id, "", kept.credential, full, profile, 0, None)
            out.changes = node_config.registry_changes(kept, full) + node_config.config_changes(existing, preview)
            if out.changes and not confirm(out.changes):
                raise NotConfirmed(f"{kept.id}: changes not confirmed, nothing written (re-run without the flags that "
                                   "change them, or confirm)")
        ident = _resolve_identity(registry, existing, full, new_identity, out.notes)
        hide.append(ident.password)
        out.device_id, out.new_identity, out.new_secret = ident.device_id, ident.created, ident.rotated
        config_written = False
        try:
            sync_files(repl, firmware, out, say)
            if firmware:
                release.reset_updates(repl, out.notes)  # the firmware just uploaded is the one that runs
            if profile.ca is not None:
                sync_files(repl, [DeviceFile(node_config.CA_PATH, profile.ca.read_bytes())], out, say)
            if profile.release_key is not None:
                sync_files(repl, [release.key_file(profile.release_key)], out, say)
            cal = existing.get("cal") if existing and isinstance(existing.get("cal"), dict) else None
            config = node_config.build(ident.device_id, ident.password, ident.credential, full, profile, 0, cal)
            config["cfg"] = node_config.next_cfg(existing if existing and existing.get("device") == ident.device_id else None,
                                                 config)
            out.cfg = config["cfg"]
            say("writing /config.json")
            data = node_config.encode(config)
            if repl.sha256(node_config.CONFIG_PATH) != DeviceFile(node_config.CONFIG_PATH, data).sha256:
                repl.write_file(node_config.CONFIG_PATH, data)
            config_written = True
            check = repl.exec("import json\nc = json.load(open('/config.json'))\nprint(c['device'], c['credential'])").split()
            if check != [ident.device_id, str(ident.credential)]:
                raise ProvisionError(f"the node reads back a different config ({check[:1]}); re-run provision")
        except BaseException:
            if ident.created and not config_written:
                _forget(registry, ident.device_id)
            raise
        out.board = sorted({*out.board, f"device {ident.device_id}"})
        registered()
        if run_selftest:
            say("restarting the board, so the self-test runs the firmware just installed")
            repl.soft_reset()
            say("running the self-test (Wi-Fi, broker, first reading)")
            try:
                text = repl.exec(selftest.RUN, timeout=SELFTEST_TIMEOUT)
            except DeviceException as e:
                raise selftest.SelfTestError("the self-test crashed on the node:\n" + selftest.redact(str(e), hide)) from None
            out.selftest = selftest.parse(selftest.redact(text, hide))
    return out
