"""Write a complete broker directory: config, password files, ACLs, CA and server certificate.

Re-running is safe and is how registry changes reach the broker. What would
cut someone off if it changed is kept: the CA is never replaced (every
deployed node trusts exactly it), the server key and certificate are kept
until they must change (new host names, expiry near), and the accounts'
secrets are kept. Everything derived from the registry and the settings is
re-rendered.

Every file is written with kerbside.core.files.atomic_write, so a file that
exists keeps its owner, group and mode: a re-render as root leaves the
password file readable by mosquitto. A new file mosquitto must read that holds
a secret is created 0640 with the group of mosquitto's user when we are root,
so the broker can read it from the first reload.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kerbside.core.files import atomic_write
from kerbside.core.registry import Device
from kerbside.core.settings import BrokerConfig, MqttConfig
from kerbside.provisioning import broker, pki
from kerbside.provisioning.identity import new_secret
from kerbside.provisioning.passwd import PasswdError, hash_password, verify_password

PUBLIC = 0o644
"""Mode of a new certificate, ACL or config; secrets get 0600 (0640 when mosquitto reads them). Existing files keep theirs."""


@dataclass(frozen=True)
class BrokerDir:
    root: Path

    @property
    def files(self) -> broker.BrokerFiles:
        r = self.root.resolve()
        return broker.BrokerFiles(r / "passwd", r / "acl", r / "ca.pem", r / "server.pem", r / "server.key",
                                  r / "passwd.internal", r / "acl.internal")

    @property
    def conf(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    def secret_file(self, account: str) -> Path:
        """Where an internal account's password is kept, for the collector's or operator's settings."""
        return self.root / f"{account}.secret"


@dataclass
class TlsResult:
    done: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return ", ".join(self.done)


def _group_of(user: str | None) -> int | None:
    if not user:
        return None
    try:
        return pwd.getpwnam(user).pw_gid
    except KeyError:
        return None


def write_for_broker(path: Path, data: bytes | str, secret: bool, system_user: str | None = None) -> None:
    """A file mosquitto reads. Existing: owner, group and mode kept. New secret, as root: 0640, mosquitto's group."""
    gid = _group_of(system_user) if secret and os.geteuid() == 0 and not path.exists() else None
    atomic_write(path, data, PUBLIC if not secret else 0o640 if gid is not None else 0o600)
    if gid is not None:
        os.chown(path, -1, gid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _install_ca(d: BrokerDir, city_ca: Path | None, system_user: str | None) -> tuple[bytes, str]:
    """ca.pem as it must be: never replaced once there, since every deployed node trusts exactly it."""
    f = d.files
    if f.cafile.exists():
        current = f.cafile.read_bytes()
        pki.check_ca_pem(current)
        if city_ca is not None and not pki.same_cert(city_ca.read_bytes(), current):
            raise pki.PkiError(
                f"{f.cafile} already holds another CA, and every node provisioned so far trusts only that one: "
                f"replacing it with {city_ca} would cut them all off. To move the fleet to a new CA, re-provision "
                f"every node with it first, then move {f.cafile} away yourself and run broker-config again")
        return current, "kept the CA"
    if city_ca is not None:
        pem = city_ca.read_bytes()
        pki.check_ca_pem(pem)
        write_for_broker(f.cafile, pem, secret=False, system_user=system_user)
        return pem, "installed the city's CA"
    ca = pki.generate_ca()
    write_for_broker(f.cafile, ca.cert_pem, secret=False, system_user=system_user)
    atomic_write(d.ca_key, ca.key_pem)
    return ca.cert_pem, f"generated a new kerbside CA ({d.ca_key} is its private key: move it offline)"


def _ca_key(d: BrokerDir, ca_cert: x509.Certificate, given: Path | None) -> pki.KeyPair | None:
    path = given or (d.ca_key if d.ca_key.exists() else None)
    if path is None:
        return None
    pem = path.read_bytes()
    if not pki.key_matches(ca_cert, pki.load_key(pem, str(path))):
        raise pki.PkiError(f"{path} is not the private key of {d.files.cafile}: pass the key of the CA the nodes trust")
    return pki.KeyPair(ca_cert.public_bytes(serialization.Encoding.PEM), pem)


def server_cert_problems(d: BrokerDir, ca_cert: x509.Certificate, hosts: list[str]) -> tuple[list[str], list[str]]:
    """Why the broker certificate must be re-issued (blocking), and why it should be soon (renewal)."""
    f = d.files
    if not (f.certfile.exists() and f.keyfile.exists()):
        return ["there is none"], []
    cert = pki.load_cert(f.certfile.read_bytes(), str(f.certfile))
    must = []
    if not pki.key_matches(cert, pki.load_key(f.keyfile.read_bytes(), str(f.keyfile))):
        must.append(f"{f.keyfile.name} is not its key")
    if not pki.issued_by(cert, ca_cert):
        must.append(f"it was not issued by the CA in {f.cafile.name}, so nodes refuse it")
    if hosts and pki.sans(cert) != set(hosts):
        must.append(f"it names {', '.join(sorted(pki.sans(cert))) or 'nothing'}, not {', '.join(hosts)}")
    left = pki.days_left(cert)
    soon = [] if left > pki.RENEW_DAYS else [f"it expired {-left:.0f} days ago" if left < 0 else
                                               f"it expires in {left:.0f} days"]
    return must, soon


def ensure_tls(d: BrokerDir, hosts: list[str], city_ca: Path | None = None, ca_key: Path | None = None,
               server_cert: Path | None = None, server_key: Path | None = None,
               system_user: str | None = None) -> TlsResult:
    """Put ca.pem, server.pem and server.key in place; say what was done and what the operator must do."""
    f = d.files
    out = TlsResult()
    if (server_cert is None) != (server_key is None):
        raise pki.PkiError("a city-issued broker certificate needs --server-cert and --server-key together")
    if server_cert is not None and city_ca is None and not f.cafile.exists():
        raise pki.PkiError("a city-issued broker certificate needs the city's CA: pass --ca-cert")
    ca_pem, done = _install_ca(d, city_ca, system_user)
    out.done.append(done)
    ca_cert = pki.check_ca_pem(ca_pem)
    if server_cert is not None and server_key is not None:
        cert_pem, key_pem = server_cert.read_bytes(), server_key.read_bytes()
        cert = pki.load_cert(cert_pem, str(server_cert))
        if not pki.issued_by(cert, ca_cert):
            raise pki.PkiError(f"{server_cert} was not issued by the CA in {f.cafile}: nodes would refuse the broker")
        if not pki.key_matches(cert, pki.load_key(key_pem, str(server_key))):
            raise pki.PkiError(f"{server_key} is not the private key of {server_cert}")
        write_for_broker(f.certfile, cert_pem, secret=False, system_user=system_user)
        write_for_broker(f.keyfile, key_pem, secret=True, system_user=system_user)
        out.done.append("installed the city's broker certificate")
        return out
    must, soon = server_cert_problems(d, ca_cert, hosts)
    if not must and not soon:
        out.done.append("kept the broker certificate")
        return out
    key = _ca_key(d, ca_cert, ca_key)
    if key is None:
        why = "; ".join(must + soon)
        if must:
            raise pki.PkiError(f"the broker certificate must be issued again ({why}), which needs the CA's private key, "
                               f"and it is not in {d.root}: pass --ca-key /path/to/ca.key (from where you keep it "
                               "offline). The CA itself is kept, so deployed nodes keep trusting the broker")
        out.done.append("kept the broker certificate")
        out.warnings.append(f"renew the broker certificate: {why}. Run broker-config again with --ca-key /path/to/ca.key "
                            "(the same CA issues it; nodes need nothing)")
        return out
    server = pki.issue_server_cert(key, hosts)
    write_for_broker(f.certfile, server.cert_pem, secret=False, system_user=system_user)
    write_for_broker(f.keyfile, server.key_pem, secret=True, system_user=system_user)
    if must == ["there is none"]:
        out.done.append(f"issued a broker certificate for {', '.join(hosts)}")
    else:
        out.done.append(f"issued a new broker certificate for {', '.join(hosts)} from the same CA ({'; '.join(must + soon)})")
    return out


def account_password(d: BrokerDir, account: str) -> str:
    """An internal account's secret: generated once, then kept so the running collector stays connected."""
    path = d.secret_file(account)
    if path.exists():
        secret = path.read_text().strip()
        if secret:
            return secret
    secret = new_secret()
    atomic_write(path, secret + "\n")
    return secret


def _kept_hashes(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        user, sep, h = line.partition(":")
        if sep:
            out[user] = h
    return out


def render_internal(d: BrokerDir, accounts: broker.Accounts, system_user: str | None = None) -> None:
    """The internal listener's accounts. A hash that still matches its secret is kept: no change, no reload needed."""
    f = d.files
    old = _kept_hashes(f.internal_password_file)
    hashes = {}
    for user in accounts.all:
        secret = account_password(d, user)
        try:
            keep = user in old and verify_password(secret, old[user])
        except PasswdError:
            keep = False
        hashes[user] = old[user] if keep else hash_password(secret)
    write_for_broker(f.internal_password_file, broker.render_internal_passwd(hashes), secret=True, system_user=system_user)
    write_for_broker(f.internal_acl_file, broker.render_internal_acl(accounts), secret=False, system_user=system_user)


def render_nodes(d: BrokerDir, devices: dict[str, Device], system_user: str | None = None) -> None:
    """The registry-derived files: what provision, decommission and rotate must refresh."""
    f = d.files
    write_for_broker(f.password_file, broker.render_passwd(devices.values()), secret=True, system_user=system_user)
    write_for_broker(f.acl_file, broker.render_acl(), secret=False, system_user=system_user)


def write_all(d: BrokerDir, devices: dict[str, Device], b: BrokerConfig, mqtt: MqttConfig | None = None) -> TlsResult:
    """Everything, for `broker-config`: `b` is the [broker] section, `mqtt` the collector's [mqtt] the broker must serve."""
    accounts = broker.Accounts.from_settings(b)
    tls = ensure_tls(d, b.hosts, **tls_paths(b), system_user=b.system_user)
    render_nodes(d, devices, b.system_user)
    render_internal(d, accounts, b.system_user)
    n = b.fleet_size or sum(1 for dev in devices.values() if dev.active)
    conf = broker.render_conf(d.files, Path(b.state_dir), broker.queue_limit(n), b.tls_port, b.plain_port, b.tls_bind, mqtt,
                              b.internal_bind, Path(b.pid_file), b.system_user, b.log_dest)
    write_for_broker(d.conf, conf, secret=False, system_user=b.system_user)
    return tls


def tls_paths(b: BrokerConfig) -> dict[str, Path | None]:
    return {"city_ca": Path(b.ca_cert) if b.ca_cert else None, "ca_key": Path(b.ca_key) if b.ca_key else None,
            "server_cert": Path(b.server_cert) if b.server_cert else None,
            "server_key": Path(b.server_key) if b.server_key else None}
