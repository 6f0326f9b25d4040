"""`broker-config --check` and `--apply`: prove the rendered broker works before the reload, and after it.

A reload that mosquitto cannot complete does not fail loudly: a password file
it cannot read leaves it with no accounts, and it disconnects the whole fleet
and the collector. So before sending SIGHUP, --apply checks what the running
broker will do with the files: each one readable by the user mosquitto runs
as (by the permission bits, and for real: a throwaway mosquitto started on the
same files switches to that user before it reads them), the configuration
accepted, the accounts and the certificate working. Only then does it reload,
and it confirms afterwards that the operator account is accepted and that the
collector is connected and subscribed again (its /metrics).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import queue
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kerbside.core.errors import ProvisioningError
from kerbside.core.settings import BrokerConfig, HttpConfig
from kerbside.provisioning import broker, pki
from kerbside.provisioning.broker_dir import BrokerDir, account_password, server_cert_problems

OK, WARN, ERROR = "ok", "warn", "error"
TRIAL_TIMEOUT = 15.0
CONFIRM_TIMEOUT = 60.0
"""The collector retries the broker with a backoff of up to 30 s: twice that to see it back."""


class ApplyError(ProvisioningError, RuntimeError):
    """The broker could not be reloaded, or did not come back as it must."""


@dataclass(frozen=True)
class Finding:
    level: str
    subject: str
    detail: str


def _ids(user: str) -> tuple[int, set[int]] | None:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    return pw.pw_uid, gids


def _allowed(st: os.stat_result, uid: int, gids: set[int], want: int) -> bool:
    """want: 4 read, 2 write, 1 execute/search (POSIX bits; ACLs are not looked at)."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode >> 6 & want == want)
    if st.st_gid in gids:
        return bool(st.st_mode >> 3 & want == want)
    return bool(st.st_mode & want == want)


def access_for(path: Path, user: str, want: int) -> str | None:
    """Why `user` cannot read (want=4) or write (want=2) `path`, or None if it can."""
    ids = _ids(user)
    if ids is None:
        return f"there is no user {user!r} on this host (broker.system_user)"
    uid, gids = ids
    path = path.resolve()
    for parent in reversed(path.parents):
        st = parent.stat()
        if not _allowed(st, uid, gids, 1):
            return f"{user} cannot enter {parent} ({describe(st)})"
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path} does not exist"
    if not _allowed(st, uid, gids, want):
        return f"{user} cannot {'read' if want == 4 else 'write'} it ({describe(st)})"
    return None


def describe(st: os.stat_result) -> str:
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{owner}:{group} {stat.S_IMODE(st.st_mode):04o}"


def check_access(d: BrokerDir, b: BrokerConfig) -> list[Finding]:
    """Every file mosquitto opens as its user, and the directories it writes."""
    out = []
    for path in d.files.read_by_mosquitto():
        why = access_for(path, b.system_user, 4)
        fix = f": chown {b.system_user} {path} (or chgrp and chmod 640)" if why and "cannot read" in why else ""
        out.append(Finding(ERROR, path.name, why + fix) if why else Finding(OK, path.name, f"readable by {b.system_user}"))
    for directory, what in ((Path(b.state_dir), "persistence"), (Path(b.pid_file).parent, "pid file")):
        why = access_for(directory, b.system_user, 2 | 1)
        out.append(Finding(ERROR, str(directory), f"{what}: {why}: chown {b.system_user} {directory}") if why else
                   Finding(OK, str(directory), f"{what}: writable by {b.system_user}"))
    return out


def check_certs(d: BrokerDir, hosts: list[str]) -> list[Finding]:
    """Expiry of the CA and the broker certificate, and whether they belong together."""
    f = d.files
    out = []
    try:
        ca = pki.check_ca_pem(f.cafile.read_bytes())
    except (OSError, pki.PkiError) as e:
        return [Finding(ERROR, f.cafile.name, str(e))]
    left = pki.days_left(ca)
    level = ERROR if left < 0 else WARN if left < pki.CA_WARN_DAYS else OK
    when = f"expired {-left:.0f} days ago" if left < 0 else f"in {left:.0f} days"
    out.append(Finding(level, f.cafile.name, f"CA {ca.subject.rfc4514_string()}, expires {ca.not_valid_after_utc:%Y-%m-%d} "
                       f"({when})" + ("" if level == OK else ": nodes must get a new /ca.pem before then")))
    try:
        cert = pki.load_cert(f.certfile.read_bytes(), f.certfile.name)
        must, soon = server_cert_problems(d, ca, hosts)
    except (OSError, pki.PkiError) as e:
        return [*out, Finding(ERROR, f.certfile.name, str(e))]
    left = pki.days_left(cert)
    when = f"expired {-left:.0f} days ago" if left < 0 else f"in {left:.0f} days"
    names = ", ".join(sorted(pki.sans(cert)))
    if must:
        out.append(Finding(ERROR, f.certfile.name, "; ".join(must)))
    expired = left < 0
    out.append(Finding(ERROR if expired else WARN if soon else OK, f.certfile.name,
                       f"for {names}, issued by the CA, expires {cert.not_valid_after_utc:%Y-%m-%d} ({when})"
                       + ("; renew: broker-config --ca-key /path/to/ca.key" if soon else "")))
    return out


def _trial_conf(text: str, ports: dict[str, int], log: Path) -> str:
    """The rendered config on throwaway loopback ports: no persistence, no pid file, logging to a file."""
    out = []
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "listener":
            out.append(f"listener {ports[value.split()[0]]} 127.0.0.1")
        elif key in ("pid_file", "persistence_location"):
            continue
        elif key == "persistence":
            out.append("persistence false")
        elif key == "log_dest" and value.strip() != "topic":
            if f"log_dest file {log}" not in out:  # syslog, stdout or a file: one file of our own, once
                out.append(f"log_dest file {log}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mosquitto() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def connect_account(host: str, port: int, user: str, password: str, ca: Path | None, timeout: float = 5.0) -> str | None:
    """Log in with MQTT; None when accepted, else the broker's answer. The client id is the user name anyway."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv311, clean_session=True)
    c.username_pw_set(user, password)
    if ca is not None:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.check_hostname = False  # the name is checked by the nodes; here: is this our certificate and account
        c.tls_set_context(ctx)
    answers: queue.Queue[object] = queue.Queue()
    c.on_connect = lambda _c, _u, _f, rc, _p: answers.put(rc)
    try:
        c.connect(host, port, keepalive=10)
    except OSError as e:
        return str(e)
    c.loop_start()
    try:
        rc = answers.get(timeout=timeout)
    except queue.Empty:
        rc = "no answer"
    finally:
        c.disconnect()
        c.loop_stop()
    return None if getattr(rc, "is_failure", True) is False else str(rc)


def trial_run(d: BrokerDir, b: BrokerConfig, timeout: float = TRIAL_TIMEOUT) -> list[Finding]:
    """Start a throwaway mosquitto on the rendered files (loopback ports, no persistence) and log in to it.

    Started as root it switches to broker.system_user before reading the password files, ACLs and keys,
    exactly as the real broker does at each reload: if it starts, they are readable and valid.
    """
    binary = _mosquitto()
    if binary is None:
        return [Finding(WARN, "trial run", "mosquitto is not installed here: the configuration was not tried")]
    internal_tls = b.internal_bind not in broker.LOOPBACK
    with tempfile.TemporaryDirectory(prefix="kerbside-broker-trial-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        log = work / "mosquitto.log"
        log.touch()
        ids = _ids(b.system_user)
        if os.geteuid() == 0 and ids is not None:
            os.chown(log, ids[0], -1)  # written after mosquitto switched user
        ports = {str(b.plain_port): _free_port(), str(b.tls_port): _free_port()}
        conf = work / "mosquitto.conf"
        conf.write_text(_trial_conf(d.conf.read_text(), ports, log))
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            up = _wait_listening(proc, list(ports.values()), timeout)
            if not up:
                tail = log.read_text(errors="replace").strip().splitlines()[-4:]
                return [Finding(ERROR, "trial run", "mosquitto did not start on the rendered files"
                                + (f": {' / '.join(tail)}" if tail else f" (exit status {proc.poll()})"))]
            out = [Finding(OK, "trial run", f"mosquitto started on {d.conf} as {b.system_user}")]
            op = b.operator_user
            refused = connect_account("127.0.0.1", ports[str(b.plain_port)], op, account_password(d, op),
                                      d.files.cafile if internal_tls else None)
            out.append(Finding(ERROR, "trial run", f"the internal listener refused {op}: {refused}") if refused else
                       Finding(OK, "trial run", f"the internal listener accepts {op}"))
            out.append(_tls_handshake(ports[str(b.tls_port)], d.files.cafile))
            return out
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_listening(proc: subprocess.Popen[bytes], ports: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    waiting = list(ports)
    while waiting:
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        try:
            with socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.5):
                waiting.pop(0)
        except OSError:
            time.sleep(0.05)
    return True


def _tls_handshake(port: int, ca: Path) -> Finding:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
            version = s.version()
    except (OSError, ssl.SSLError) as e:
        return Finding(ERROR, "trial run", f"the nodes' listener fails the TLS handshake against ca.pem: {e}")
    return Finding(OK, "trial run", f"the nodes' listener presents a certificate from ca.pem ({version})")


def running_pid(pid_file: Path) -> int:
    """The running broker's pid, from its pid file; refuses a stale file."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        raise ApplyError(f"no mosquitto pid in {pid_file} (broker.pid_file): is mosquitto running with the rendered "
                         "config? Start it (systemctl start mosquitto); nothing was reloaded") from None
    comm = Path(f"/proc/{pid}/comm")
    try:
        name = comm.read_text().strip() if comm.parent.exists() else "mosquitto"
        os.kill(pid, 0)
    except (OSError, ProcessLookupError):
        raise ApplyError(f"{pid_file} names pid {pid}, which is not running: start mosquitto; nothing was reloaded") from None
    if name != "mosquitto":
        raise ApplyError(f"{pid_file} names pid {pid}, which is {name!r}, not mosquitto: nothing was reloaded")
    return pid


def reload(pid_file: Path) -> int:
    pid = running_pid(pid_file)
    os.kill(pid, signal.SIGHUP)
    return pid


def confirm_operator(d: BrokerDir, b: BrokerConfig, timeout: float = 10.0) -> Finding:
    """The reloaded broker accepts the operator on the internal listener (its password file was read)."""
    host = "127.0.0.1" if b.internal_bind in ("0.0.0.0", "::") else b.internal_bind
    ca = None if b.internal_bind in broker.LOOPBACK else d.files.cafile
    deadline = time.monotonic() + timeout
    while True:
        refused = connect_account(host, b.plain_port, b.operator_user, account_password(d, b.operator_user), ca)
        if refused is None:
            return Finding(OK, "reload", f"the broker accepts {b.operator_user} after the reload")
        if time.monotonic() > deadline:
            return Finding(ERROR, "reload", f"after the reload the broker refuses {b.operator_user}: {refused}; see "
                           "mosquitto's log")
        time.sleep(0.2)


def collector_state(http: HttpConfig) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{http.host}:{http.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if not s.labels}


def confirm_collector(http: HttpConfig, timeout: float = CONFIRM_TIMEOUT) -> Finding:
    """The collector on this host is connected and subscribed again, read from its own /metrics."""
    if not http.port:
        return Finding(WARN, "collector", "not confirmed: http.port is 0, so the collector has no /metrics")
    where = f"http://{http.host}:{http.port}/metrics"
    deadline = time.monotonic() + timeout
    state: dict[str, float] | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            state = collector_state(http)
            if state.get("kerbside_mqtt_connected") == 1 and state.get("kerbside_mqtt_subscribed") == 1:
                return Finding(OK, "collector", f"connected and subscribed after the reload ({where})")
        time.sleep(0.2)
    if state is None:
        return Finding(WARN, "collector", f"not confirmed: nothing answers on {where} (a collector on another host: check "
                       "its /healthz there)")
    return Finding(ERROR, "collector", f"not connected to the broker {timeout:.0f} s after the reload ({where}); see its "
                   "log and mosquitto's")
