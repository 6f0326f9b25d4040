"""Write a complete broker directory: config, password file, ACL, CA and server certificate.

Re-running is safe and is how registry changes reach the broker: the CA, the
server key and the collector's secret are kept if present (replacing them
would cut off every node or the collector), everything derived from the
registry is re-rendered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from kerbside.core.files import atomic_write
from kerbside.core.registry import Device
from kerbside.core.settings import MqttConfig
from kerbside.provisioning import broker, pki
from kerbside.provisioning.identity import new_secret
from kerbside.provisioning.passwd import hash_password

PUBLIC = 0o644
"""Mode of a new certificate, ACL or config; secrets get atomic_write's 0600. Existing files keep theirs."""


@dataclass(frozen=True)
class BrokerDir:
    root: Path

    @property
    def files(self) -> broker.BrokerFiles:
        r = self.root.resolve()
        return broker.BrokerFiles(r / "passwd", r / "acl", r / "ca.pem", r / "server.pem", r / "server.key")

    @property
    def conf(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def collector_secret(self) -> Path:
        return self.root / "collector.secret"


def _sans(cert_pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }


def ensure_tls(d: BrokerDir, hosts: list[str], city_ca: Path | None = None, city_ca_key: Path | None = None,
               server_cert: Path | None = None, server_key: Path | None = None) -> str:
    """Put ca.pem, server.pem and server.key in place; returns what was done, for the technician."""
    f = d.files
    if server_cert or server_key:
        if not (server_cert and server_key and city_ca):
            raise pki.PkiError("a city-issued server certificate needs --server-cert, --server-key and --ca-cert together")
        pki.check_ca_pem(city_ca.read_bytes())
        atomic_write(f.cafile, city_ca.read_bytes(), PUBLIC)
        atomic_write(f.certfile, server_cert.read_bytes(), PUBLIC)
        atomic_write(f.keyfile, server_key.read_bytes())
        return "using the city's CA and server certificate"
    if city_ca or city_ca_key:
        if not (city_ca and city_ca_key):
            raise pki.PkiError("to issue the broker certificate from the city's CA give both --ca-cert and --ca-key")
        pki.check_ca_pem(city_ca.read_bytes())
        ca = pki.KeyPair(city_ca.read_bytes(), city_ca_key.read_bytes())
        atomic_write(f.cafile, ca.cert_pem, PUBLIC)
        done = "issued the broker certificate from the city's CA"
    elif f.cafile.exists() and d.ca_key.exists():
        ca = pki.KeyPair(f.cafile.read_bytes(), d.ca_key.read_bytes())
        done = "kept the kerbside CA"
    else:
        ca = pki.generate_ca()
        atomic_write(f.cafile, ca.cert_pem, PUBLIC)
        atomic_write(d.ca_key, ca.key_pem)
        done = f"generated a new kerbside CA ({d.ca_key} is its private key: keep it offline)"
    if f.certfile.exists() and f.keyfile.exists() and _sans(f.certfile.read_bytes()) == set(hosts) and not city_ca:
        return done + ", kept the broker certificate"
    server = pki.issue_server_cert(ca, hosts)
    atomic_write(f.certfile, server.cert_pem, PUBLIC)
    atomic_write(f.keyfile, server.key_pem)
    return done + f", issued a broker certificate for {', '.join(hosts)}"


def collector_password(d: BrokerDir) -> str:
    """The collector's MQTT secret: generated once, then kept so the running collector stays connected."""
    if d.collector_secret.exists():
        secret = d.collector_secret.read_text().strip()
        if secret:
            return secret
    secret = new_secret()
    atomic_write(d.collector_secret, secret + "\n")
    return secret


def render_auth(d: BrokerDir, devices: dict[str, Device], collector_user: str = broker.COLLECTOR_USER) -> None:
    """The registry-derived files: what decommission and rotate must refresh."""
    f = d.files
    atomic_write(f.password_file, broker.render_passwd(devices.values(), hash_password(collector_password(d)), collector_user))
    atomic_write(f.acl_file, broker.render_acl(collector_user), PUBLIC)


def write_all(d: BrokerDir, devices: dict[str, Device], hosts: list[str], state_dir: Path, tls_port: int = broker.TLS_PORT,
              plain_port: int = broker.PLAIN_PORT, fleet_size: int | None = None, mqtt: MqttConfig | None = None,
              **tls: Path | None) -> str:
    """Everything, for `broker-config`; `mqtt` is the collector's [mqtt] section the broker must serve."""
    done = ensure_tls(d, hosts, **tls)
    render_auth(d, devices)
    n = fleet_size if fleet_size is not None else sum(1 for dev in devices.values() if dev.active)
    conf = broker.render_conf(d.files, state_dir, broker.queue_limit(n), tls_port, plain_port, mqtt=mqtt)
    atomic_write(d.conf, conf, PUBLIC)
    return done
