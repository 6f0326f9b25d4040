"""Client-id takeover: a node claiming another node's id, or the collector's, gets its own session and no other.

Mosquitto disconnects the older client when a second one connects with the same client id, and a clean-session
connect wipes the stored session: with a free choice of client id, one stolen node could kick any node, or the
collector, and destroy its queued messages. The rendered config makes the client id the user name on both
listeners (use_username_as_clientid), and the collectors' and operator's accounts exist only on the internal one.
"""

from __future__ import annotations

import contextlib
import queue
import time

import pytest
from prov_helpers import WAIT, Refused, RenderedBroker, connect
from sec_helpers import A, B, mosquitto_pub, node_pub, topic

from kerbside.provisioning.broker import INGEST_USER

pytestmark = pytest.mark.services  # the real mosquitto on the rendered config


def test_a_node_claiming_another_nodes_client_id_takes_nothing_over(rendered: RenderedBroker) -> None:
    """Row 1: node B connects as client id A. A stays connected and keeps its queued command."""
    victim = rendered.node(A, clean=False)
    assert victim.subscribe(topic(A, "cmd")) == [1]
    op = rendered.operator()
    try:
        # A is online: B connects with A's client id (paho, clean session) and stays connected.
        attacker = connect(rendered.tls_port, B, rendered.secrets[B], rendered.ca, client_id=A, clean=True)
        op.publish(topic(A, "cmd"), b"while online")
        assert victim.take(1) == [(topic(A, "cmd"), b"while online")]
        assert victim.disconnects.empty() and victim.client.is_connected()
        attacker.close()
        # A is offline with a command queued in its session: B claims A's id again (mosquitto_pub, clean session).
        victim.close()
        op.publish(topic(A, "cmd"), b"queued")
        r = node_pub(rendered, B, topic(B, "status"), client_id=A)
        assert r.returncode == 0, r.stderr  # accepted, as B: the broker replaced the client id with B's user name
    finally:
        op.close()
    back = rendered.node(A, clean=False)
    try:
        assert back.session_present, "A's session was wiped"
        assert back.take(1) == [(topic(A, "cmd"), b"queued")]
    finally:
        back.close()
    assert f"as {A} (p2, c1" not in rendered.log.read_text(), "a clean session was opened under A's id"


def test_a_node_claiming_the_collectors_client_id_cannot_wipe_its_queue(rendered: RenderedBroker) -> None:
    """Row 2: while the collector is offline, a node connects with client id kerbside-collector. Nothing is lost."""
    col = rendered.ingest()
    assert col.subscribe("kerbside/v1/+/readings") == [1]
    col.close()  # offline: its persistent session queues from now on
    node = rendered.node(A)
    for i in range(5):
        node.publish(topic(A, "readings"), b"reading %d" % i)
    node.close()
    # The attacker's client id is the collector's, on the nodes' listener, with a clean session.
    r = node_pub(rendered, B, topic(B, "readings"), client_id=INGEST_USER, message=b"attacker's own")
    assert r.returncode == 0, r.stderr
    # The collector's credential is no help to it there, nor the attacker's secret under the collector's name.
    for user, password in ((INGEST_USER, rendered.secret(INGEST_USER)), (INGEST_USER, rendered.secrets[B])):
        r = mosquitto_pub(rendered.tls_port, user, password, topic(A, "readings"), ca=rendered.ca, client_id=INGEST_USER)
        assert r.returncode != 0 and "not authori" in r.stderr, r.stderr
    with pytest.raises(Refused, match="Not authorized"):
        connect(rendered.plain_port, B, rendered.secrets[B], client_id=INGEST_USER)  # nor the internal listener
    col = rendered.ingest()
    try:
        assert col.session_present, "the collector's session was wiped"
        got = col.take(6)
        assert sorted(got) == sorted([(topic(A, "readings"), b"reading %d" % i) for i in range(5)]
                                     + [(topic(B, "readings"), b"attacker's own")])
    finally:
        col.close()


def test_collectors_in_a_group_each_keep_their_own_session(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Several collectors (mqtt.group) each have an ingest account, so distinct client ids, and split the load."""
    members = ["collector-1", "collector-2"]
    rb = RenderedBroker.create(tmp_path, (A,), ingest_users=members).start()
    try:
        probes = [rb.ingest(m) for m in members]
        for p in probes:
            assert p.subscribe("$share/collectors/kerbside/v1/+/readings") == [1]
        node = rb.node(A)
        for i in range(20):
            node.publish(topic(A, "readings"), b"%02d" % i)
        node.close()
        got: list[list[bytes]] = [[], []]
        deadline = time.monotonic() + WAIT
        while sum(map(len, got)) < 20 and time.monotonic() < deadline:
            for share, p in zip(got, probes, strict=True):
                with contextlib.suppress(queue.Empty):
                    share.append(p.received.get(timeout=0.05)[1])
        assert sorted(got[0] + got[1]) == [b"%02d" % i for i in range(20)]
        assert all(got), got  # both members took a share
        # A member's account cannot take over the other member's session either.
        intruder = connect(rb.plain_port, "collector-2", rb.secret("collector-2"), client_id="collector-1")
        assert probes[0].disconnects.empty() and probes[0].client.is_connected()
        intruder.close()
        for p in probes:
            p.close()
    finally:
        rb.stop()
