"""The dev stack's port race: free_port() and the service's bind are separate, another process can win."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kerbside.devstack import Influxd, Mosquitto, ServiceError, free_port, listening

pytestmark = pytest.mark.services


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    """A port another process took after free_port() handed it out: bound and listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
        s.listen()
        yield s


@pytest.mark.parametrize("kind", [Mosquitto, Influxd])
def test_a_service_whose_port_was_taken_starts_on_a_fresh_one(kind: type, taken: socket.socket, tmp_path: Path) -> None:
    port = taken.getsockname()[1]
    svc = kind(kind.__name__.lower(), tmp_path / "svc", port).start()
    try:
        assert svc.port != port
        assert listening(svc.proc.pid, svc.port) is True
        assert listening(svc.proc.pid, port) is False, "ready means our process listens, not whoever owns the port"
        first = svc.port
        svc.stop()
        svc.start()
        assert svc.port == first, "a restart keeps the port its clients know"
    finally:
        svc.stop()


def test_a_restart_on_a_taken_port_fails_and_says_why(tmp_path: Path) -> None:
    svc = Mosquitto("mosquitto", tmp_path / "mq", 0).start()
    port = svc.port
    svc.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(ServiceError, match=r"(?i)address already in use"):
            svc.start(timeout=10)
    svc.stop()
    assert svc.port == port


def test_a_collector_whose_metrics_port_was_taken_starts_on_a_fresh_one(taken: socket.socket, tmp_path: Path) -> None:
    from kerbside.devstack import CollectorProcess

    port = taken.getsockname()[1]
    broker = Mosquitto("mosquitto", tmp_path / "mq", 0).start()
    coll = CollectorProcess("collector", tmp_path / "c", port, settings={
        "mqtt": {"url": broker.url, "client_id": "ports-test"}, "spool": {"dir": tmp_path / "c" / "spool"}})
    try:
        coll.start(timeout=30)
        assert coll.port != port
        assert listening(coll.proc.pid, coll.port) is True
        assert (coll.metrics() or {}).get("kerbside_mqtt_subscribed") == 1
        assert b"address already in use" in coll.log.read_bytes().lower(), "the first attempt did meet the taken port"
    finally:
        coll.stop()
        broker.stop()
