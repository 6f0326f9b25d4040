"""A node provisioned onto the emulated board uses exactly what landed in its /config.json to reach the real broker."""

from __future__ import annotations

import json
import time

import pytest
from prov_helpers import WAIT, Refused, connect

from kerbside.provisioning.node_config import NodeSpec, Profile
from kerbside.provisioning.provision import provision

pytestmark = pytest.mark.services  # the real mosquitto, the MicroPython VM and mpy-cross


def test_provisioned_credentials_work_at_the_broker(board, fleet_broker, standin_files, fast_repl) -> None:
    profile = Profile(wifi=[{"ssid": "depot", "psk": "depot-wifi-key"}], host="127.0.0.1", port=fleet_broker.tls_port,
                      ca=fleet_broker.ca)
    out = provision(board.port, NodeSpec("air", "Bahnhofplatz", "lez"), profile, fleet_broker.registry, standin_files,
                    connect=fast_repl, registered=fleet_broker.rerender_and_reload)
    with fast_repl(board.port) as repl:
        cfg = json.loads(repl.read_file("/config.json") or b"")
        ca_on_node = repl.read_file(cfg["mqtt"]["ca"])
    assert ca_on_node == fleet_broker.ca.read_bytes()
    m = cfg["mqtt"]
    assert (m["user"], m["host"], m["port"]) == (out.device_id, "127.0.0.1", fleet_broker.tls_port)

    col = fleet_broker.collector()
    col.subscribe("kerbside/v1/#")
    deadline = time.monotonic() + WAIT  # the reload after registration is asynchronous
    while True:
        try:
            node = connect(m["port"], m["user"], m["password"], fleet_broker.ca)
            break
        except Refused:
            assert time.monotonic() < deadline, "the provisioned node is refused by the broker"
            time.sleep(0.05)
    try:
        own = f"kerbside/v1/{out.device_id}/readings"
        node.publish("kerbside/v1/0a0a0a01/readings", b"spoof")
        node.publish(own, b"\x89real")
        assert col.wait_for(own) == [(own, b"\x89real")]
    finally:
        node.close()
        col.close()
