"""Who may do what: the collectors' ingest accounts read, the operator commands, nodes talk about themselves.

Before: the collector's credential was accepted on the public TLS listener and could send any command, `ota`
included, to every node. Now the ingest and operator accounts exist only in the internal listener's password
file, the ingest ACL is read-only, and a command takes the operator's account.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from prov_helpers import WAIT, Refused, RenderedBroker, connect
from sec_helpers import A, B, mosquitto_pub, topic
from typer.testing import CliRunner

from kerbside.cli import app
from kerbside.collector.dlq import DeadLetters
from kerbside.core.registry import Device, Registry
from kerbside.core.settings import child_env
from kerbside.core.settings import load as load_settings
from kerbside.devstack import CollectorProcess, free_port, scrape_metrics, wait_for
from kerbside.provisioning.broker import INGEST_USER, OPERATOR_USER
from knode import wire

pytestmark = pytest.mark.services


def test_the_collectors_credential_is_refused_on_the_public_listener(rendered: RenderedBroker) -> None:
    """Row 4: the ingest account (and the operator's) on the nodes' TLS listener: refused. Nothing lost meanwhile."""
    col = rendered.ingest()
    assert col.subscribe("kerbside/v1/+/readings") == [1]
    col.close()
    node = rendered.node(A)
    node.publish(topic(A, "readings"), b"queued for the collector")
    ingest, operator = rendered.secret(INGEST_USER), rendered.secret(OPERATOR_USER)
    for user, password in ((INGEST_USER, ingest), (OPERATOR_USER, operator)):
        r = mosquitto_pub(rendered.tls_port, user, password, topic(A, "cmd"), ca=rendered.ca, message=b"\xa0")
        assert r.returncode != 0 and "not authori" in r.stderr, (user, r.stderr)
        sub = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(rendered.tls_port), "--cafile", str(rendered.ca),
                              "-u", user, "-P", password, "-t", "kerbside/v1/#", "-C", "1", "-W", "5"],
                             capture_output=True, text=True, timeout=WAIT)
        assert sub.returncode != 0 and "not authori" in sub.stderr, (user, sub.stderr)
    with pytest.raises(Refused, match="Not authorized"):  # and a node's secret on the internal listener
        connect(rendered.plain_port, A, rendered.secrets[A])
    node.close()
    col = rendered.ingest()
    try:
        assert col.session_present and col.take(1) == [(topic(A, "readings"), b"queued for the collector")]
    finally:
        col.close()


def test_the_ingest_account_reads_and_only_the_operator_commands(rendered: RenderedBroker) -> None:
    node = rendered.node(A, clean=False)
    assert node.subscribe(topic(A, "cmd")) == [1]
    col = rendered.ingest()
    col.subscribe("kerbside/v1/#")  # granted, but the ACL filters every message it may not read
    op = rendered.operator()
    try:
        col.publish(topic(A, "cmd"), b"ota from the collector")
        col.publish(topic(B, "readings"), b"forged by the collector")
        op.publish(topic(B, "readings"), b"forged by the operator")
        op.publish(topic(A, "cmd"), b"from the operator")
        assert node.take(1) == [(topic(A, "cmd"), b"from the operator")]
        node.publish(topic(A, "ack"), b"ack")
        assert col.wait_for(topic(A, "ack")) == [(topic(A, "ack"), b"ack")]  # neither forgery nor command reached it
        op.subscribe("kerbside/v1/+/readings")  # granted, filtered: the operator does not read data
        assert op.subscribe("kerbside/v1/+/status") == [1]
        node.publish(topic(A, "readings"), b"not for the operator")
        node.publish(topic(A, "status"), b"status")
        assert op.wait_for(topic(A, "status")) == [(topic(A, "status"), b"status")]
    finally:
        for c in (node, col, op):
            c.close()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_dlq_replay_works_under_the_rendered_acl(tmp_path: Path, influxd, influx) -> None:  # type: ignore[no-untyped-def]
    """The reported bug: replay republished with the collector's credential, which the ACL forbids, and MQTT 3.1.1
    acks and drops such a publish: "replayed" while lost. Replay now writes through the decoder to InfluxDB."""
    rb = RenderedBroker.create(tmp_path / "b", (A,)).start()
    collector_registry = tmp_path / "collector-registry.json"  # the collector was pointed at the wrong file
    with Registry(collector_registry).edit():
        pass  # an empty registry
    settings = {"mqtt": {"url": f"mqtt://127.0.0.1:{rb.plain_port}", "client_id": INGEST_USER, "username": INGEST_USER,
                         "password": rb.secret(INGEST_USER)},
                "influx": {"url": influxd.url, "db": influx.db}, "spool": {"dir": tmp_path / "c" / "spool"},
                "registry": {"path": collector_registry}, "batch": {"interval_s": 0.2}}
    col = CollectorProcess("collector", tmp_path / "c", free_port(), settings=settings).start()
    try:
        t0 = int(time.time()) - 600
        payload = wire.encode_readings(bytes.fromhex(A), 0, 1, True, wire.KIT_AIR, t0, 60, 6, [(6, [1, 2, 3, 4, 5, 10000])] * 4)
        node = rb.node(A)
        node.publish(topic(A, "readings"), payload)
        node.close()
        wait_for(lambda: scrape_metrics(col.port).get('kerbside_rejected_total{reason="unknown_device"}') == 1,
                 "the readings dead-lettered as unknown_device", WAIT)
        # What the old replay did: publish on the node's topic with an account that may not (with the collector's
        # own it would also have replaced the running collector's session). MQTT 3.1.1: the broker acknowledges
        # it, mosquitto_pub exits 0, and the message is dropped.
        r = mosquitto_pub(rb.plain_port, OPERATOR_USER, rb.secret(OPERATOR_USER), topic(A, "readings"),
                          file=_write(tmp_path / "payload", payload))
        assert r.returncode == 0, r.stderr
        node = rb.node(A)
        status = wire.encode_status({"v": 1, "id": bytes.fromhex(A), "online": True})
        node.publish(topic(A, "status"), status)  # a marker after the forgery: that would have been delivered first
        node.close()
        wait_for(lambda: scrape_metrics(col.port).get('kerbside_messages_total{kind="status"}') == 1, "the marker", WAIT)
        assert scrape_metrics(col.port)['kerbside_messages_total{kind="readings"}'] == 1  # ... and dropped
        with Registry(collector_registry).edit() as devices:  # the operator fixes the cause
            devices[A] = Device(id=A, kit="air", site="Ringstrasse 12", zone="lez-inner")
        cfg = load_settings(env={"KERBSIDE_CONFIG": ""}, overrides={f"{s}.{k}": str(v) if isinstance(v, Path) else v
                                                                     for s, kv in settings.items() for k, v in kv.items()})
        r = CliRunner().invoke(app, ["dlq", "replay", "--reason", "unknown_device"], env=child_env(cfg))
        assert r.exit_code == 0 and "replayed 2 of 2 entries" in r.output, r.output
        points = influx.points("air", f"WHERE device='{A}'")
        assert len(points) == 4 and all(("site", "Ringstrasse 12") in tags for _, tags, _, _ in points)
        assert len(influx.points("status", f"WHERE device='{A}'")) == 1
        assert list(DeadLetters(cfg.dlq_dir).entries()) == []
    finally:
        col.stop()
        rb.stop()
