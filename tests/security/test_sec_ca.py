"""The CA is never replaced, the broker certificate is renewed from it, and `--check` says when something is due.

Before: the docs told the operator to move ca.key offline, and the next `broker-config` run, not finding it,
generated a new CA and overwrote ca.pem; the next broker certificate would have cut off every deployed node.
The node's side is played with its own copy of ca.pem, taken when it was provisioned.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prov_helpers import RenderedBroker, connect
from sec_helpers import A, kerbside, settings_env

from kerbside.provisioning import pki

pytestmark = pytest.mark.services


@pytest.fixture
def offline(rendered: RenderedBroker, tmp_path: Path) -> Path:
    """The operator did as told: ca.key is on a USB stick now, not in the broker directory."""
    stick = tmp_path / "usb-stick"
    stick.mkdir()
    shutil.move(rendered.dir.ca_key, stick / "ca.key")
    return stick / "ca.key"


@pytest.fixture
def node_ca(rendered: RenderedBroker, tmp_path: Path) -> Path:
    """What every deployed node carries as /ca.pem."""
    return Path(shutil.copy(rendered.ca, tmp_path / "node-ca.pem"))


def node_connects(rb: RenderedBroker, ca: Path) -> None:
    connect(rb.tls_port, A, rb.secrets[A], ca, client_id=A).close()  # verifies the chain and the name 127.0.0.1


def test_the_next_run_without_the_ca_key_keeps_the_ca(rendered: RenderedBroker, offline: Path, node_ca: Path) -> None:
    """Row 6: broker-config after ca.key went offline keeps ca.pem and the broker certificate; nodes stay connected."""
    cert = rendered.dir.files.certfile.read_bytes()
    r = kerbside(settings_env(rendered), "broker-config")
    assert r.exit_code == 0, r.output
    assert "kept the CA, kept the broker certificate" in r.output
    assert rendered.ca.read_bytes() == node_ca.read_bytes() and rendered.dir.files.certfile.read_bytes() == cert
    assert not rendered.dir.ca_key.exists()
    rendered.hup()
    node_connects(rendered, node_ca)


def test_a_new_certificate_needs_the_ca_key_and_comes_from_the_same_ca(rendered: RenderedBroker, offline: Path,
                                                                        node_ca: Path) -> None:
    env = settings_env(rendered)
    hosts = ["--host", "127.0.0.1", "--host", "localhost", "--host", "mqtt.city.example"]
    r = kerbside(env, "broker-config", *hosts)
    assert r.exit_code == 2 and "pass --ca-key" in r.output and "The CA itself is kept" in r.output, r.output
    assert rendered.ca.read_bytes() == node_ca.read_bytes()
    r = kerbside(env, "broker-config", *hosts, "--ca-key", str(offline))
    assert r.exit_code == 0 and "issued a new broker certificate for 127.0.0.1, localhost, mqtt.city.example from the same CA" \
        in r.output, r.output
    assert rendered.ca.read_bytes() == node_ca.read_bytes() and not rendered.dir.ca_key.exists()
    rendered.hup()
    node_connects(rendered, node_ca)


def test_an_expiring_certificate_is_reported_and_renewed_from_the_same_ca(rendered: RenderedBroker, offline: Path,
                                                                          node_ca: Path) -> None:
    f = rendered.dir.files
    ca = pki.KeyPair(f.cafile.read_bytes(), offline.read_bytes())
    short = pki.issue_server_cert(ca, ["127.0.0.1", "localhost"], days=10)  # as if issued 815 days ago
    f.certfile.write_bytes(short.cert_pem)
    f.keyfile.write_bytes(short.key_pem)
    env = settings_env(rendered)
    r = kerbside(env, "broker-config", "--check")
    assert r.exit_code == 1 and "(in 10 days); renew: broker-config --ca-key" in r.output, r.output
    r = kerbside(env, "broker-config")  # a routine re-render without the key: done, and a warning
    assert r.exit_code == 0 and "renew the broker certificate: it expires in 10 days" in r.output, r.output
    assert f.certfile.read_bytes() == short.cert_pem
    r = kerbside(env, "broker-config", "--ca-key", str(offline))
    assert r.exit_code == 0 and "from the same CA (it expires in 10 days)" in r.output, r.output
    renewed = pki.load_cert(f.certfile.read_bytes(), "server.pem")
    assert pki.days_left(renewed) > pki.SERVER_DAYS - 1 and pki.issued_by(renewed, pki.check_ca_pem(node_ca.read_bytes()))
    rendered.hup()
    node_connects(rendered, node_ca)
    r = kerbside(env, "broker-config", "--check")
    assert r.exit_code == 0 and "WARN" not in r.output and "ERROR" not in r.output, r.output


def test_check_reports_a_certificate_from_another_ca_and_a_second_ca_is_refused(rendered: RenderedBroker,
                                                                               tmp_path: Path) -> None:
    f = rendered.dir.files
    stranger = pki.generate_ca("somebody else")
    other = pki.issue_server_cert(stranger, ["127.0.0.1", "localhost"])
    good_cert, good_key = f.certfile.read_bytes(), f.keyfile.read_bytes()
    f.certfile.write_bytes(other.cert_pem)
    env = settings_env(rendered)
    r = kerbside(env, "broker-config", "--check")
    assert r.exit_code == 1 and "server.key is not its key" in r.output and "not issued by the CA in ca.pem" in r.output
    f.keyfile.write_bytes(other.key_pem)
    r = kerbside(env, "broker-config", "--check")
    assert r.exit_code == 1 and "not issued by the CA in ca.pem, so nodes refuse it" in r.output, r.output
    f.certfile.write_bytes(good_cert)
    f.keyfile.write_bytes(good_key)
    (tmp_path / "other-ca.pem").write_bytes(stranger.cert_pem)
    ca_before = f.cafile.read_bytes()
    r = kerbside(env, "broker-config", "--ca-cert", str(tmp_path / "other-ca.pem"))
    assert r.exit_code == 2 and "already holds another CA" in r.output and "cut them all off" in r.output, r.output
    assert f.cafile.read_bytes() == ca_before
