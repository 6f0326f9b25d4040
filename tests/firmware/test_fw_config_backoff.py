"""Config validation (clear errors, nothing half-applied) and the fleet-wide jitter of reconnects."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from knode import backoff, config

from .conftest import node_config


def test_valid_config_gets_defaults(tmp_path: Path) -> None:
    cfg = node_config()
    for k in ("period", "sample", "status_every", "cal", "pins", "ntp"):
        del cfg[k]
    del cfg["mqtt"]["keepalive"]
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    got = config.load(str(p))
    assert (got["period"], got["sample"], got["status_every"], got["mqtt"]["keepalive"]) == (60, 10, 300, 60)
    assert got["cal"] == {} and got["ntp"] == []  # the broker's host: never a public pool by default
    assert config.ntp_servers(got) == ["127.0.0.1"]


@pytest.mark.parametrize(("change", "message"), [
    ({"device": "00C0FFEE"}, "device: need 8 lowercase hex digits"),
    ({"kit": "noise"}, "kit: need 'air' or 'traffic'"),
    ({"wifi": []}, "wifi: need a list"),
    ({"wifi": [{"psk": "x"}]}, "wifi: each entry needs an ssid"),
    ({"mqtt": {"port": 1883}}, "mqtt.host: missing"),
    ({"period": 0}, "period: need a positive integer"),
    ({"sample": 120}, "need sample <= period"),
    ({"period": 86400, "sample": 1}, "more than 3600 samples"),
    ({"v": 2}, "unsupported config format"),
    ({"cal": []}, "cal/pins: need objects"),
])
def test_bad_config_names_the_key(change: dict, message: str) -> None:
    cfg = node_config()
    cfg.update(change)
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(")):
        config.validate(cfg)


def test_save_is_atomic_and_round_trips(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    config.save(config.validate(node_config()), str(p))
    assert config.load(str(p))["device"] == "00c0ffee"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["config.json"]  # no temporary left behind


def test_backoff_grows_caps_and_resets() -> None:
    b = backoff.Backoff(random.Random(1).getrandbits, base_ms=1000, cap_ms=60000)
    waits = [b.next_ms() for _ in range(12)]
    assert 1000 <= waits[0] <= 2000 and all(1000 <= w <= 60000 for w in waits)
    assert max(waits[6:]) > 30000
    b.reset()
    assert 1000 <= b.next_ms() <= 2000


def test_even_the_first_retry_is_spread() -> None:
    """After a city-wide outage the fleet's first retries must not all land on the same second."""
    first = [backoff.Backoff(random.Random(n).getrandbits).next_ms() for n in range(200)]
    assert min(first) >= 1000 and max(first) <= 2000
    assert len(set(first)) > 150


def test_a_fleet_does_not_reconnect_in_lockstep() -> None:
    """200 nodes lose the network at once: their 6th retries spread over the whole window."""
    sixth = []
    for node in range(200):
        b = backoff.Backoff(random.Random(node).getrandbits, base_ms=1000, cap_ms=300000)
        for _ in range(5):
            b.next_ms()
        sixth.append(b.next_ms())
    assert min(sixth) >= 1000 and max(sixth) <= 64000
    assert len(set(sixth)) > 190
    per_second = [0] * 65
    for w in sixth:
        per_second[w // 1000] += 1
    assert max(per_second) < 20, "no second sees more than a tenth of the fleet"
