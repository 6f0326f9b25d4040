"""The security suite's attacks, where they apply, against a real RabbitMQ cluster secured by broker-config.

`kerbside broker-config --engine rabbitmq --apply` on a 3-node cluster (tests/rabbit_helpers.py); the attacks
are played with real clients (paho over MQTT as nodes do, pika over AMQP as the collectors do), each asserting
that the attack fails and that nothing was lost: the victim's queued messages still arrive.

What differs from Mosquitto (docs/security.md): RabbitMQ 3.10 cannot tie a client id to an account, so a node
connecting with another node's client id makes the broker close the victim's connection before it checks
anything else; but it cannot open, wipe or read the victim's session, and the victim reconnects (its backoff)
to everything that was queued for it. The collectors' queue is no MQTT session at all: no client id reaches it.
"""

from __future__ import annotations

import os
import time

import pika
import pika.exceptions
import pytest
from prov_helpers import WAIT, Refused, connect
from rabbit_helpers import INGEST, OPERATOR, QUEUE, Secured, secret_of, secure, taking

from kerbside.core.registry import Registry
from kerbside.devcluster import RabbitCluster, rss_kib
from kerbside.devstack import wait_for
from kerbside.provisioning.fleet import decommission

pytestmark = [pytest.mark.services, pytest.mark.cluster]

DEVICES = tuple(f"0e0e0e{i:02x}" for i in range(1, 13))


@pytest.fixture(scope="module")
def secured(rabbit: RabbitCluster, tmp_path_factory: pytest.TempPathFactory) -> Secured:
    return secure(rabbit, tmp_path_factory.mktemp("sec-rabbit"), DEVICES)


def topic(device: str, kind: str) -> str:
    return f"kerbside/v1/{device}/{kind}"


def node(secured: Secured, device: str, at: int = 1, client_id: str | None = None, clean: bool = False):  # type: ignore[no-untyped-def]
    return connect(secured.cluster.nodes[at - 1].mqtt_port, device, secret_of(device), client_id=client_id or device,
                   clean=clean)


def operator(secured: Secured, at: int = 1):  # type: ignore[no-untyped-def]
    return connect(secured.cluster.nodes[at - 1].mqtt_port, OPERATOR, secured.secret(OPERATOR), client_id="operator-1")


def test_a_node_claiming_another_nodes_client_id_gets_no_session_and_the_victim_keeps_its_commands(
        secured: Secured) -> None:
    """Row 1 on the cluster: node B connects as client id A (clean and persistent session), through other nodes."""
    a, b = DEVICES[0], DEVICES[1]
    victim = node(secured, a, at=1)
    assert victim.subscribe(topic(a, "cmd")) == [1]
    victim.close()  # offline: commands queue in its session (a quorum queue, on every cluster node)
    op = operator(secured, at=3)
    try:
        op.publish(topic(a, "cmd"), b"queued while offline").wait_for_publish(WAIT)
        for clean in (True, False):
            with pytest.raises(Refused, match="Server unavailable"):
                node(secured, b, at=2, client_id=a, clean=clean)  # may not delete, nor resume, A's session queue
        # A online: B claiming its id closes A's connection (RabbitMQ 3.10 checks the id before anything else),
        # B is refused all the same, and A, reconnecting, loses nothing
        victim = node(secured, a, at=1)
        assert victim.session_present
        assert victim.take(1) == [(topic(a, "cmd"), b"queued while offline")]
        with pytest.raises(Refused):
            node(secured, b, at=2, client_id=a)
        assert victim.disconnects.get(timeout=WAIT) is not None
        # paho's loop would reconnect it by itself (after ~1 s) and take what follows before `back` does
        victim.close()
        op.publish(topic(a, "cmd"), b"sent meanwhile").wait_for_publish(WAIT)
        back = node(secured, a, at=3)
        try:
            assert back.session_present and back.take(1) == [(topic(a, "cmd"), b"sent meanwhile")]
        finally:
            back.close()
    finally:
        op.close()


def test_a_node_publishes_only_as_itself(secured: Secured) -> None:
    """Forgery: node B publishing on A's topics, or a command to itself, is disconnected; nothing reaches the queue."""
    a, b = DEVICES[2], DEVICES[3]
    secured.purge()
    with taking(secured) as queue:
        attacker = node(secured, b, at=2)
        info = attacker.client.publish(topic(a, "readings"), b"forged", qos=1)
        assert attacker.disconnects.get(timeout=WAIT) is not None and not info.is_published()
        attacker.close()
        attacker = node(secured, b, at=2)
        info = attacker.client.publish(topic(b, "cmd"), b"a command to itself", qos=1)
        assert attacker.disconnects.get(timeout=WAIT) is not None and not info.is_published()
        attacker.close()
        honest = node(secured, a, at=3)
        honest.publish(topic(a, "readings"), b"genuine").wait_for_publish(WAIT)
        honest.close()
        assert queue.wait(1) == [(f"kerbside.v1.{a}.readings", b"genuine")]
        time.sleep(0.5)
        assert queue.messages == [(f"kerbside.v1.{a}.readings", b"genuine")]


def test_a_nodes_credential_cannot_reach_the_collectors_queue(secured: Secured) -> None:
    """Row 2's purpose on the cluster: a node cannot consume, purge or delete what waits for the collectors."""
    a, b = DEVICES[4], DEVICES[5]
    secured.purge()
    n = node(secured, a, at=1)
    for i in range(3):
        n.publish(topic(a, "readings"), b"queued %d" % i).wait_for_publish(WAIT)
    n.close()
    attempts = {"get": lambda ch: ch.basic_get(QUEUE, auto_ack=True), "purge": lambda ch: ch.queue_purge(QUEUE),
                "delete": lambda ch: ch.queue_delete(QUEUE), "declare": lambda ch: ch.queue_declare("node-tap")}
    for attempt in attempts.values():
        conn = secured.amqp(b, node=2)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
            attempt(conn.channel())
        conn.close()
    with taking(secured) as queue:
        assert [body for _, body in queue.wait(3)] == [b"queued 0", b"queued 1", b"queued 2"]


def test_the_ingest_accounts_read_and_only_the_operator_commands(secured: Secured) -> None:
    """Row 4: an ingest account cannot publish (no command, no forged reading); the operator reads no data."""
    a = DEVICES[6]
    secured.purge()
    conn = secured.amqp(INGEST[0], node=2)
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
        ch.basic_publish("amq.topic", f"kerbside.v1.{a}.cmd", b"ota from the collector")
        ch.basic_get(QUEUE)  # the refusal arrives with the next round trip
    conn.close()
    # over MQTT an ingest account may log in, but subscribing to anything (it needs a session queue) closes it
    ingest = connect(secured.cluster.nodes[0].mqtt_port, INGEST[0], secured.secret(INGEST[0]), client_id=INGEST[0])
    ingest.client.subscribe(topic(a, "cmd"), 1)
    assert ingest.disconnects.get(timeout=WAIT) is not None and ingest.subacks.empty()
    ingest.close()
    victim = node(secured, a, at=1)
    assert victim.subscribe(topic(a, "cmd")) == [1]
    op = operator(secured, at=2)
    try:
        info = op.client.publish(topic(a, "readings"), b"forged by the operator", qos=1)
        assert op.disconnects.get(timeout=WAIT) is not None and not info.is_published()
        op.close()
        op = operator(secured, at=2)
        op.publish(topic(a, "cmd"), b"from the operator").wait_for_publish(WAIT)
        assert victim.take(1) == [(topic(a, "cmd"), b"from the operator")]
        conn = secured.amqp(OPERATOR, node=3)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
            conn.channel().basic_get(QUEUE)
        conn.close()
    finally:
        op.close()
        victim.close()


def test_an_ingest_account_may_watch_statuses_and_nothing_else(secured: Secured) -> None:
    """Its fleet view's private queue: statuses only (not commands, not readings beside the queue), server-named only."""
    conn = secured.amqp(INGEST[0], node=3)
    ch = conn.channel()
    view = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(view, "amq.topic", routing_key="kerbside.v1.*.status")  # allowed: what the collector does
    assert view.startswith("amq.gen-")
    for key in ("kerbside.v1.*.cmd", f"kerbside.v1.{DEVICES[0]}.cmd", "kerbside.v1.*.readings", "#"):
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
            ch.queue_bind(view, "amq.topic", routing_key=key)
        ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
        ch.queue_declare("ingest-tap", durable=True)  # a named, lasting queue: refused
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
        ch.basic_publish("amq.topic", f"kerbside.v1.{DEVICES[0]}.status", b"forged status")
        ch.queue_declare(view, passive=True)  # the refusal arrives with the next round trip
    conn.close()


def test_oversize_messages_are_refused_by_the_cluster(secured: Secured, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Row 3: ten 6.7 MB messages and one of 1 MB from a node: each refused unacknowledged, none stored or relayed.

    RabbitMQ 3.10 reads the whole frame, then refuses the publish (max_message_size) on the connection's channel:
    the message is never acknowledged, queued or kept, and the memory is given back."""
    a, b = DEVICES[7], DEVICES[8]
    secured.purge()
    victim = node(secured, a, at=1)
    victim.publish(topic(a, "readings"), b"before").wait_for_publish(WAIT)
    at = secured.cluster.nodes[1]
    assert at.pid is not None
    rss_before = rss_kib(at.pid)
    refusals = at.log.read_text().count("is larger than configured max size")
    for k, size in enumerate([6_700_000] * 10 + [1_000_000], 1):
        attacker = node(secured, b, at=2)
        info = attacker.client.publish(topic(b, "status"), os.urandom(size), qos=1, retain=True)
        # the broker refuses it on reading it (its log says so) and never acknowledges it: the node keeps it
        wait_for(lambda k=k: at.log.read_text().count("is larger than configured max size") == refusals + k,
                 f"refusal {k} in the broker's log", WAIT * 2)
        assert f"message size {size} is larger than configured max size 16389" in at.log.read_text()
        time.sleep(0.2)
        assert not info.is_published()
        attacker.close()
    rss_after = rss_kib(at.pid)
    # the frames were read whole before the refusal (RabbitMQ 3.10: up to 256 MB a frame, docs/security.md); that
    # memory is given back, nothing of it is kept
    back = wait_for(lambda: (r := rss_kib(at.pid)) - rss_before < 16 * 1024 and r, "the broker's memory back", 120, interval=1)
    print(f"cluster node RSS {rss_before} KiB before, {rss_after} KiB right after 10 x 6700000 + 1 x 1000000 bytes "
          f"refused, {back} KiB once given back")
    victim.publish(topic(a, "readings"), b"after").wait_for_publish(WAIT)
    victim.close()
    with taking(secured) as queue:
        assert [body for _, body in queue.wait(2)] == [b"before", b"after"]
        time.sleep(0.5)
        assert len(queue.messages) == 2
    # no retained store either: a subscriber gets no retained copy of anything B sent
    sub = node(secured, DEVICES[9], at=2, clean=True)
    assert sub.subscribe(topic(DEVICES[9], "cmd")) == [1]
    time.sleep(0.5)
    assert sub.received.empty()
    sub.close()


def test_a_decommissioned_node_is_refused_once_the_definitions_are_applied(secured: Secured) -> None:
    """The registry is the truth: decommission, re-apply, and the node's account is gone from the cluster."""
    gone = DEVICES[10]
    node(secured, gone, at=1).close()
    decommission(Registry(secured.registry), gone, "stolen")
    out = secured.apply()
    assert f"deleted {gone}" in out.replace("\n", " ")
    for at in (1, 2, 3):
        with pytest.raises(Refused):
            node(secured, gone, at=at)
    node(secured, DEVICES[11], at=2).close()  # everyone else still gets in
