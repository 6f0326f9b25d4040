"""The rendered broker config against the real mosquitto (started on the very files broker-config writes):
each node is confined to its own topics."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from prov_helpers import WAIT, Refused, add_device, connect, wait_refused

from kerbside.provisioning import broker, fleet, pki
from kerbside.provisioning.passwd import hash_password, passwd_line, verify_password

pytestmark = pytest.mark.services  # the real mosquitto

A, B, C, D = "0a0a0a01", "0a0a0a02", "0a0a0a03", "0a0a0a04"


def topic(device: str, kind: str) -> str:
    return f"kerbside/v1/{device}/{kind}"


def test_node_publishes_own_readings_over_tls(fleet_broker) -> None:
    col = fleet_broker.collector()
    assert col.subscribe("kerbside/v1/#") == [1]
    node = connect(fleet_broker.tls_port, A, fleet_broker.secrets[A], fleet_broker.ca)
    try:
        node.publish(topic(A, "readings"), b"\x01own")
        node.publish(topic(A, "status"), b"\x02status")
        seen = col.wait_for(topic(A, "status"))
        assert (topic(A, "readings"), b"\x01own") in seen
    finally:
        node.close()
        col.close()


def test_node_cannot_publish_as_another_node(fleet_broker) -> None:
    col = fleet_broker.collector()
    col.subscribe("kerbside/v1/#")
    node = connect(fleet_broker.tls_port, A, fleet_broker.secrets[A], fleet_broker.ca)
    try:
        node.publish(topic(B, "readings"), b"spoofed")
        node.publish(topic(B, "status"), b"spoofed")
        node.publish(topic(B, "cmd"), b"spoofed")
        node.publish(topic(A, "readings"), b"marker")
        # Same client, same broker thread: once the marker is delivered, the spoofs would have been too.
        seen = col.wait_for(topic(A, "readings"))
        assert seen == [(topic(A, "readings"), b"marker")]
    finally:
        node.close()
        col.close()


def test_node_reads_only_its_own_commands(fleet_broker) -> None:
    op = fleet_broker.operator()
    node = connect(fleet_broker.tls_port, A, fleet_broker.secrets[A], fleet_broker.ca)
    try:
        # Mosquitto 2.0 grants the SUBACK but checks read access on every message it would deliver.
        node.subscribe(topic(B, "cmd"))
        assert node.subscribe(topic(A, "cmd")) == [1]
        node.subscribe("kerbside/v1/+/cmd")
        node.subscribe("kerbside/v1/#")
        op.publish(topic(B, "cmd"), b"for B")
        op.publish(topic(A, "cmd"), b"for A")
        seen = node.wait_for(topic(A, "cmd"))
        assert {t for t, _ in seen} == {topic(A, "cmd")}
    finally:
        node.close()
        op.close()


def test_collector_reads_and_only_the_operator_commands(fleet_broker) -> None:
    """The ingest account reads what nodes send and nothing else; commands take the operator's account."""
    col = fleet_broker.collector()
    op = fleet_broker.operator()
    node = connect(fleet_broker.tls_port, A, fleet_broker.secrets[A], fleet_broker.ca)
    node.subscribe(topic(A, "cmd"))
    watcher = fleet_broker.collector("collector-2")
    watcher.subscribe("kerbside/v1/+/readings")
    try:
        col.publish(topic(A, "cmd"), b"from the collector")
        col.publish(topic(A, "readings"), b"forged by the collector")
        op.publish(topic(A, "readings"), b"forged by the operator")
        op.publish(topic(A, "cmd"), b"from the operator")
        assert node.wait_for(topic(A, "cmd")) == [(topic(A, "cmd"), b"from the operator")]
        node.publish(topic(A, "readings"), b"marker")
        assert watcher.wait_for(topic(A, "readings")) == [(topic(A, "readings"), b"marker")]
    finally:
        for c in (col, op, node, watcher):
            c.close()


@pytest.mark.parametrize("user,password", [(A, "wrong"), (A, ""), ("ffffffff", "whatever"), (broker.INGEST_USER, "wrong")])
def test_wrong_credentials_refused(fleet_broker, user: str, password: str) -> None:
    with pytest.raises(Refused, match="Not authorized"):
        connect(fleet_broker.tls_port, user, password, fleet_broker.ca)


def test_anonymous_refused_on_both_listeners(fleet_broker) -> None:
    import paho.mqtt.client as mqtt

    for port, tls in ((fleet_broker.plain_port, False), (fleet_broker.tls_port, True)):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        if tls:
            c.tls_set(ca_certs=str(fleet_broker.ca))
        rcs: list[object] = []
        c.on_connect = lambda _c, _u, _f, rc, _p, rcs=rcs: rcs.append(rc)
        c.connect("127.0.0.1", port)
        deadline = time.monotonic() + WAIT
        while not rcs and time.monotonic() < deadline:
            c.loop(0.1)
        c.disconnect()
        assert rcs and str(rcs[0]) == "Not authorized", (port, rcs)


def test_client_trusting_an_unknown_ca_refuses_the_broker(fleet_broker, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger-ca.pem"
    stranger.write_bytes(pki.generate_ca("somebody else").cert_pem)
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(fleet_broker.tls_port, A, fleet_broker.secrets[A], stranger)


def test_tls_checks_the_broker_name(fleet_broker) -> None:
    """The generated certificate names only the hosts given to broker-config; anything else is refused."""
    ctx = ssl.create_default_context(cafile=str(fleet_broker.ca))
    with socket.create_connection(("127.0.0.1", fleet_broker.tls_port), timeout=WAIT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert s.version() in ("TLSv1.2", "TLSv1.3")
    with socket.create_connection(("127.0.0.1", fleet_broker.tls_port), timeout=WAIT) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|not valid"):
            ctx.wrap_socket(raw, server_hostname="broker.elsewhere.example")


def test_rotated_away_secret_refused_after_reload(fleet_broker) -> None:
    old = fleet_broker.secrets[C]
    connect(fleet_broker.tls_port, C, old, fleet_broker.ca).close()
    dev, new = fleet.rotate(fleet_broker.registry, C)
    assert dev.credential == 2 and new != old
    fleet_broker.rerender_and_reload()
    wait_refused(fleet_broker.tls_port, C, old, fleet_broker.ca)
    connect(fleet_broker.tls_port, C, new, fleet_broker.ca).close()


def test_decommissioned_node_refused_after_reload(fleet_broker) -> None:
    connect(fleet_broker.tls_port, D, fleet_broker.secrets[D], fleet_broker.ca).close()
    dev = fleet.decommission(fleet_broker.registry, D, "stolen")
    assert dev.status == "decommissioned" and dev.password_hash == ""
    fleet_broker.rerender_and_reload()
    wait_refused(fleet_broker.tls_port, D, fleet_broker.secrets[D], fleet_broker.ca)
    assert D not in (fleet_broker.dir.files.password_file.read_text())
    # Other nodes are unaffected by the reload.
    connect(fleet_broker.tls_port, A, fleet_broker.secrets[A], fleet_broker.ca).close()


def test_mosquitto_passwd_hashes_verify_both_ways(tmp_path: Path) -> None:
    """Our $7$ hashes and mosquitto_passwd's are the same format: each side verifies the other's."""
    pw = tmp_path / "pw"
    pw.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "someone", "s3cret-value"], check=True, capture_output=True)
    theirs = pw.read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$")
    assert verify_password("s3cret-value", theirs)
    assert not verify_password("s3cret-valuE", theirs)
    assert passwd_line("0a0a0a09", hash_password("x")).startswith("0a0a0a09:$7$1000$")


def test_connected_node_is_cut_off_by_decommission_and_reload(fleet_broker) -> None:
    """Mosquitto re-checks connected clients on SIGHUP: a stolen node online right now is dropped, not just refused later."""
    dev_id = "0a0a0a05"
    secret = add_device(fleet_broker.registry, dev_id)
    fleet_broker.rerender_and_reload()
    deadline = time.monotonic() + WAIT
    while True:
        try:
            node = connect(fleet_broker.tls_port, dev_id, secret, fleet_broker.ca)
            break
        except Refused:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    disconnected: list[object] = []
    node.client.on_disconnect = lambda _c, _u, _f, rc, _p: disconnected.append(rc)
    fleet.decommission(fleet_broker.registry, dev_id)
    fleet_broker.rerender_and_reload()
    deadline = time.monotonic() + WAIT
    while not disconnected and time.monotonic() < deadline:
        time.sleep(0.05)
    node.close()
    assert disconnected, "a decommissioned node stayed connected after the reload"
    with pytest.raises(Refused):
        connect(fleet_broker.tls_port, dev_id, secret, fleet_broker.ca)
