"""Fixtures for the firmware tests: simulated boards with their own virtual flash, node configs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kerbside.simulator.city import Site
from kerbside.simulator.clock import VirtualClock
from kerbside.simulator.hardware import Faults, SimBoard

SITE = Site(48.207, 16.37, True, busy=1.2)


class TCPBoard:
    """Just the network of a board (knode.hal): plain asyncio connections, for MQTT client tests."""

    async def open_connection(self, host: str, port: int, ssl: object = None) -> tuple:
        if ssl is None:
            return await asyncio.open_connection(host, port)
        return await asyncio.open_connection(host, port, ssl=ssl, server_hostname=host)


def node_config(device: str = "00c0ffee", kit: str = "air", port: int = 1883, **over: object) -> dict:
    cfg = {"v": 1, "device": device, "kit": kit, "site": "test", "zone": "lez",
           "wifi": [{"ssid": "test", "psk": "secret"}],
           "mqtt": {"host": "127.0.0.1", "port": port, "tls": False, "user": device, "password": "", "keepalive": 60},
           "ntp": [], "period": 60, "sample": 10, "status_every": 300, "credential": 1, "cfg": 1,
           "cal": {}, "pins": {}}
    cfg.update(over)
    return cfg


@pytest.fixture
def make_board(tmp_path: Path) -> Callable[..., SimBoard]:
    """make_board(cfg, speedup=..., start=...) -> a SimBoard whose flash holds /config.json."""
    count = [0]

    def make(cfg: dict | None = None, speedup: float = 100.0, start: float | None = None,
             faults: Faults | None = None) -> SimBoard:
        count[0] += 1
        root = tmp_path / f"flash{count[0]}"
        clock = VirtualClock(time.time() if start is None else start, speedup)
        board = SimBoard(count[0], root, clock, SITE, (cfg or {}).get("kit", "air"), 1234 + count[0], faults)
        if cfg is not None:
            (root / "config.json").write_text(json.dumps(cfg))
        return board

    return make
