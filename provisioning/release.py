"""`kerbside release keygen | sign | verify | push`: the city's signed over-the-air updates.

Why these four: the release key is the one secret that can put code on every
node, so it is made once, kept offline and encrypted (keygen), used only to
sign a release file on the machine that holds it (sign), and never needed by
the operator who sends the file to nodes with the operator's MQTT credential
(push). That credential alone cannot run code on a node: the node checks the
signature (docs/security.md, "Firmware updates"). `verify` runs the node's own
acceptance check on a release file before anyone sends it.

Provisioning calls `key_file` and `reset_updates` (the node's /release.pub, and
the provisioned firmware running again after a USB re-provision).
"""

from __future__ import annotations

import ast
import getpass
import queue
import random
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import cbor2
import typer

from kerbside.core import release as rel
from kerbside.core.contract import PREFIX
from kerbside.core.errors import ConfigError
from kerbside.core.release import Release, ReleaseError
from kerbside.provisioning.bundle import FIRMWARE, LIB, DeviceFile

JOURNAL_PATH = "/ota.json"
WAIT_STATUS_S = 900.0
"""How long push waits for the node's first status after the install: the node's trial limit (600 s) and a reboot."""


# --- building --------------------------------------------------------------------------------------


def firmware_version(firmware: Path) -> str:
    """FW in knode/node.py: what the node reports in its status, so the manifest says the same."""
    path = firmware / "knode" / "node.py"
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError) as e:
        raise ReleaseError(f"cannot read the firmware version from {path}: {e}") from e
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "FW" for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    raise ReleaseError(f"{path} has no FW = \"...\" line")


def release_files(files: list[DeviceFile]) -> list[tuple[str, bytes]]:
    """The firmware package only: main.py and boot.py are never updated over the air (they roll updates back)."""
    return [(f.path, f.data) for f in files if f.path.startswith(LIB + "/")]


# --- provisioning ------------------------------------------------------------------------------------


def key_file(public: Path) -> DeviceFile:
    """/release.pub for a node, from the city's release public key."""
    return DeviceFile(rel.NODE_KEY_PATH, rel.node_key(public))


def reset_updates(repl: Any, notes: list[str]) -> None:
    """After a USB upload, the provisioned firmware runs, not an update installed over the air before.

    The journal keeps `seen`, the newest release the node accepted, so re-provisioning does not open the
    node to replays of older signed releases.
    """
    import json

    raw = repl.read_file(JOURNAL_PATH)
    if raw is None:
        return
    try:
        j = json.loads(raw)
    except ValueError:
        j = {}
    if not isinstance(j, dict):
        j = {}
    if not j.get("cur") and j.get("state") == "ok":
        return
    seen = j.get("seen", 0) if isinstance(j.get("seen", 0), int) else 0
    repl.write_file(JOURNAL_PATH, json.dumps({"cur": "", "prev": "", "state": "ok", "boots": 0, "seq": 0, "fw": "",
                                              "seen": seen, "note": "provisioned over USB"}).encode())
    if j.get("cur"):
        notes.append(f"the node ran update {j.get('fw')!r} (release {j.get('seq')}); the firmware just uploaded "
                     f"replaces it (releases up to {seen} stay refused)")


# --- pushing ----------------------------------------------------------------------------------------


@dataclass
class Broker:
    """Where and as whom push connects: the operator's credential, which may publish commands."""

    url: str
    username: str = ""
    password: str = ""
    ca_file: Path | None = None


@dataclass
class PushOutcome:
    device: str
    commands: int = 0
    resumed: int = 0
    fw: str | None = None
    """What the node reports after the install (None: push did not wait)."""
    installed: bool = False
    notes: list[str] = field(default_factory=list)


class _Link:
    def __init__(self, broker: Broker, device: str) -> None:
        import paho.mqtt.client as mqtt

        u = urllib.parse.urlsplit(broker.url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ConfigError(f"--broker {broker.url!r}: need mqtt://host:port or mqtts://host:port")
        self.device = device
        self.received = 0
        """Messages received so far: each queued message carries its number, so statuses can be ordered after acks."""
        self.acks: queue.Queue[tuple[int, dict]] = queue.Queue()
        self.status: queue.Queue[tuple[int, dict]] = queue.Queue()
        ready: queue.Queue[object] = queue.Queue()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"kerbside-release-{random.getrandbits(32):08x}",
                        protocol=mqtt.MQTTv311)
        if broker.username:
            c.username_pw_set(broker.username, broker.password)
        if u.scheme == "mqtts":
            c.tls_set(ca_certs=str(broker.ca_file) if broker.ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = lambda _c, _u, _f, rc, _p: ready.put(rc)
        c.on_subscribe = lambda _c, _u, _m, rcs, _p: ready.put(rcs)
        c.on_message = self._message
        self.c = c
        try:
            c.connect(u.hostname, u.port or (8883 if u.scheme == "mqtts" else 1883), keepalive=30)
        except OSError as e:
            raise ReleaseError(f"cannot reach the broker at {broker.url}: {e}") from e
        c.loop_start()
        try:
            rc = ready.get(timeout=10)
            if getattr(rc, "is_failure", False):
                raise ReleaseError(f"the broker refused {broker.username or 'anonymous'}: {rc}")
            c.subscribe([(f"{PREFIX}{device}/ack", 1), (f"{PREFIX}{device}/status", 1)])
            rcs = ready.get(timeout=10)
            if any(getattr(r, "is_failure", False) for r in rcs):  # type: ignore[attr-defined]
                raise ReleaseError(f"the broker does not let {broker.username or 'anonymous'} read {device}'s acks")
        except queue.Empty:
            self.close()
            raise ReleaseError(f"no answer from the broker at {broker.url}") from None
        except ReleaseError:
            self.close()
            raise

    def _message(self, _c: object, _u: object, msg: Any) -> None:
        try:
            m = cbor2.loads(msg.payload)
        except Exception:  # not ours to judge here; the collector dead-letters it
            return
        if isinstance(m, dict):
            self.received += 1
            (self.acks if msg.topic.endswith("/ack") else self.status).put((self.received, m))

    def send(self, cmd_id: int, args: dict, timeout: float) -> tuple[int, dict]:
        payload = cbor2.dumps({"v": 1, "cmd": cmd_id, "op": "ota", "args": args})
        self.c.publish(f"{PREFIX}{self.device}/cmd", payload, qos=1).wait_for_publish(timeout)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReleaseError(f"{self.device}: no ack for command {cmd_id} within {timeout:.0f} s "
                                   "(node offline? run push again: it resumes)")
            try:
                n, ack = self.acks.get(timeout=left)
            except queue.Empty:
                continue
            if ack.get("cmd") == cmd_id:
                return n, ack

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _resume_point(err: str) -> tuple[int, int] | None:
    """"ota: expected file 3 at 4096" -> (3, 4096)."""
    words = err.split()
    if err.startswith("ota: expected file ") and len(words) == 6:
        try:
            return int(words[3]), int(words[5])
        except ValueError:
            return None
    return None


def push(release: Release, device: str, broker: Broker, *, ack_timeout: float = 60.0, wait_status: float = WAIT_STATUS_S,
         say: Callable[[str], None] = lambda _m: None) -> PushOutcome:
    """Send `release` to one node, one command at a time, and (with wait_status) see what it runs afterwards."""
    out = PushOutcome(device)
    link = _Link(broker, device)
    try:
        cmds = list(release.commands())
        cmd_id = random.getrandbits(31)
        i = restarts = last = 0
        while i < len(cmds):
            cmd_id += 1
            args = cmds[i]
            say(f"{device}: {i + 1}/{len(cmds)}")
            last, ack = link.send(cmd_id, args, ack_timeout)
            out.commands += 1
            if ack.get("ok"):
                i += 1
                continue
            err = str(ack.get("err", ""))
            where = _resume_point(err)
            if where is not None and i > 0:
                i = next(k for k, a in enumerate(cmds) if k > 0 and (a["file"], a["off"]) >= where)
                out.resumed += 1
            elif "no update in progress" in err and i > 0 and restarts < 3:
                i, restarts = 0, restarts + 1  # the node rebooted mid-transfer: start over
                out.resumed += 1
            else:
                raise ReleaseError(f"{device} refused the update: {err}")
        if wait_status <= 0:
            return out
        out.fw = _status_after_reboot(link, last, wait_status)
        out.installed = out.fw == release.fw
        if not out.installed:
            out.notes.append(f"the node runs {out.fw!r}, not {release.fw!r}: it rolled the update back "
                             "(its journal note says why; the update's first status never came)")
        return out
    finally:
        link.close()


def _status_after_reboot(link: _Link, after: int, timeout: float) -> str | None:
    """The fw of the first online status after the node went offline to reboot (both after message `after`, the
    install's ack: a retained or periodic status from before says nothing about the update)."""
    deadline = time.monotonic() + timeout
    went_offline = False
    while time.monotonic() < deadline:
        try:
            n, s = link.status.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if n < after:
            continue
        if s.get("online") is False:
            went_offline = True
        elif went_offline and s.get("online") is True:
            return str(s.get("fw"))
    raise ReleaseError(f"{link.device}: no status after the install within {timeout:.0f} s")


# --- commands ---------------------------------------------------------------------------------------

app = typer.Typer(help="Signed firmware updates: make the release key, sign a release, check it, send it to nodes.",
                  no_args_is_help=True)


def _passphrase(path: Path | None, confirm: bool) -> bytes:
    if path is not None:
        try:
            return path.read_text().rstrip("\n").encode()
        except OSError as e:
            raise ConfigError(f"cannot read the passphrase file {path}: {e.strerror or e}") from e
    first = getpass.getpass("release key passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise ConfigError("the passphrases differ")
    if not first:
        raise ConfigError("an empty passphrase: pass --no-passphrase if that is really meant")
    return first.encode()


PassFileOpt = Annotated[Path | None, typer.Option("--passphrase-file", help="Read the key's passphrase from this file "
                                                  "(automation) instead of asking.", show_default=False)]


@app.command("keygen")
def keygen_cmd(
    out: Annotated[Path, typer.Option("--out", help="Private key file to create (PEM, encrypted).")] = Path("release.key"),
    pub: Annotated[Path, typer.Option("--pub", help="Public key file to create: the [node] release_key of every depot.")]
    = Path("release.pub"),
    no_passphrase: Annotated[bool, typer.Option("--no-passphrase", help="Leave the private key unencrypted "
                                                "(test fleets only).")] = False,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Make the city's release key pair, once. Never overwrites a key.

    Keep the private key offline (docs/security.md, "Firmware updates"); give release.pub to every depot.
    """
    from kerbside.core.files import atomic_write

    for p in (out, pub):
        if p.exists():
            raise ConfigError(f"{p} exists: a release key is made once (every node trusts it); remove it yourself "
                              "only if no node was provisioned with it")
    passphrase = None if no_passphrase else _passphrase(passphrase_file, confirm=passphrase_file is None)
    key = rel.new_key()
    atomic_write(out, rel.private_pem(key, passphrase), mode=0o600)
    atomic_write(pub, rel.public_pem(key), mode=0o644)
    typer.echo(f"wrote {out} (private: keep it offline) and {pub} (public); fingerprint "
                 f"{rel.fingerprint(rel.point(key))}")


@app.command("sign")
def sign_cmd(
    key: Annotated[Path, typer.Option("--key", help="The release private key.")],
    out: Annotated[Path | None, typer.Option("--out", help="Release file to write (default "
                                             "kerbside-<fw>-<seq>.kota).", show_default=False)] = None,
    seq: Annotated[int | None, typer.Option("--seq", help="Release number; nodes refuse one not above what they "
                                            "run. Default: now, in Unix seconds.", show_default=False)] = None,
    firmware_dir: Annotated[Path | None, typer.Option("--firmware-dir", help="Firmware source tree (knode/) to "
                                                      "release instead of the one shipped with kerbside.",
                                                      show_default=False)] = None,
    passphrase_file: PassFileOpt = None,
    no_passphrase: Annotated[bool, typer.Option("--no-passphrase", help="The key is not encrypted.")] = False,
) -> None:
    """Compile the firmware package and sign it as one release file for `kerbside release push`."""
    from kerbside.core.files import atomic_write
    from kerbside.provisioning.bundle import build

    firmware = firmware_dir or FIRMWARE
    n = int(time.time()) if seq is None else seq
    if not 0 < n < 2**32:
        raise ConfigError(f"--seq {n}: need 1..{2**32 - 1}")
    k = rel.load_private(key, None if no_passphrase else _passphrase(passphrase_file, confirm=False))
    fw = firmware_version(firmware)
    release = rel.build(release_files(build(firmware)), n, fw, k)
    target = out or Path(f"kerbside-{fw}-{n}.kota")
    atomic_write(target, release.to_bytes(), mode=0o644)
    size = sum(len(f) for f in release.files)
    typer.echo(f"wrote {target}: firmware {fw}, release {n}, {len(release.files)} files, {size} bytes, signed by "
                 f"{rel.fingerprint(rel.point(k))}")


def _read_release(path: Path) -> Release:
    try:
        return Release.from_bytes(path.read_bytes(), str(path))
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e


@app.command("verify")
def verify_cmd(
    release_file: Annotated[Path, typer.Argument(help="A .kota file from `kerbside release sign`.")],
    pub: Annotated[Path, typer.Option("--pub", help="The release public key nodes hold.")],
    seen: Annotated[int, typer.Option(help="Check as a node that already ran this release number.")] = 0,
) -> None:
    """Run the node's own acceptance check (signature, paths, sizes, hashes) on a release file."""
    release = _read_release(release_file)
    key = rel.node_key(pub)
    m = rel.verify(release, key, seen)
    typer.echo(f"OK: firmware {m['fw']}, release {m['seq']}, {len(m['files'])} files, key {rel.fingerprint(key)}")


@app.command("push")
def push_cmd(
    release_file: Annotated[Path, typer.Argument(help="A .kota file from `kerbside release sign`.")],
    devices: Annotated[list[str], typer.Argument(help="Device ids (8 hex digits) to update, one after another.")],
    broker: Annotated[str, typer.Option("--broker", help="mqtts://host:8883 (or mqtt:// on a test broker).")],
    user: Annotated[str, typer.Option("--user", help="The operator account, which may send commands.")] = "",
    password_file: Annotated[Path | None, typer.Option("--password-file", help="Its password, from a file; asked "
                                                       "for when --user is set and this is not.",
                                                       show_default=False)] = None,
    ca_file: Annotated[Path | None, typer.Option("--ca-file", help="CA of the broker's certificate (mqtts).",
                                                 show_default=False)] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for each node's status after its install; 0: "
                                        "do not wait.")] = WAIT_STATUS_S,
) -> None:
    """Send a signed release to nodes and report what each one runs afterwards.

    One command at a time, each acknowledged before the next; an interrupted push run again resumes
    where the node is. The node installs only what the city's release key signed.
    """
    from kerbside.core.contract import DEVICE_RE

    bad = [d for d in devices if not DEVICE_RE.match(d)]
    if bad:
        raise ConfigError(f"not device ids: {', '.join(bad)}")
    release = _read_release(release_file)
    password = ""
    if user:
        if password_file is not None:
            try:
                password = password_file.read_text().strip()
            except OSError as e:
                raise ConfigError(f"cannot read {password_file}: {e.strerror or e}") from e
        else:
            password = getpass.getpass(f"password for {user}: ")
    target = Broker(broker, user, password, ca_file)
    failed = 0
    for device in devices:
        try:
            out = push(release, device, target, wait_status=wait, say=lambda m: None)
        except ReleaseError as e:
            failed += 1
            typer.echo(f"{device}: FAILED: {e}", err=True)
            continue
        if wait <= 0:
            typer.echo(f"{device}: sent ({out.commands} commands); it reboots into {release.fw} on trial")
        elif out.installed:
            typer.echo(f"{device}: installed {release.fw} (release {release.seq})")
        else:
            failed += 1
            typer.echo(f"{device}: FAILED: {'; '.join(out.notes)}", err=True)
    if failed:
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="release")
