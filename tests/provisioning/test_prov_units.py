"""Pure logic: profiles, hashes, ids, queue sizing, config versions, self-test lines, batch files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from kerbside.core import settings
from kerbside.core.errors import ConfigError
from kerbside.core.files import atomic_write
from kerbside.provisioning import batch, broker, node_config, selftest
from kerbside.provisioning.identity import IdentityError, check_device_id, new_device_id, new_secret
from kerbside.provisioning.passwd import PasswdError, hash_password, verify_password


def _profile(path: Path) -> node_config.Profile:
    cfg = settings.load(path, env={})
    return node_config.Profile.from_settings(cfg.node)


def test_profile_from_toml(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    p = tmp_path / "depot.toml"
    p.write_text('[node]\nbroker_host = "mqtt.city.example"\nbroker_port = 8884\nca = "ca.pem"\nperiod = 30\nsample = 5\n'
                 '[[node.wifi]]\nssid = "city-iot"\npsk = "abcdefgh"\n[[node.wifi]]\nssid = "depot"\npsk = ""\n')
    p.chmod(0o600)
    prof = _profile(p).check()
    assert prof.wifi == [{"ssid": "city-iot", "psk": "abcdefgh"}, {"ssid": "depot", "psk": ""}]
    assert (prof.host, prof.port, prof.ca, prof.period, prof.sample, prof.status_every) == (
        "mqtt.city.example", 8884, tmp_path / "ca.pem", 30, 5, 300)
    assert settings.load(p, env={}).warnings == []
    p.chmod(0o644)
    assert "chmod 600" in settings.load(p, env={}).warnings[0]


def test_wifi_ssid_flag_goes_first_with_its_key_from_the_environment(tmp_path: Path) -> None:
    p = tmp_path / "depot.toml"
    p.write_text('[[node.wifi]]\nssid = "city-iot"\npsk = "abcdefgh"\n[[node.wifi]]\nssid = "depot"\npsk = "old-key-1"\n')
    cfg = settings.load(p, env={"KERBSIDE_NODE_WIFI_PSK": "new-key-22"}, overrides={"node.wifi_ssid": "depot"})
    assert node_config.Profile.from_settings(cfg.node).wifi == [{"ssid": "depot", "psk": "new-key-22"},
                                                                {"ssid": "city-iot", "psk": "abcdefgh"}]


@pytest.mark.parametrize("text,message", [
    ("[node\nbroker_host=1", "not valid TOML"),
    ("[node]\nwifi = 3", "expected a list of \\[\\[tables\\]\\]"),
    ("[node]\nbroker_port = 'eighty'", "expected an integer"),
    ('[mqtt]\nhost = "mqtt.city.example"', "mqtt.host is \\[node\\] broker_host now"),  # a depot profile from before
    ('[[wifi]]\nssid = "depot"', "wifi is \\[\\[node.wifi\\]\\] now"),
])
def test_bad_profiles(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "depot.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        settings.load(p, env={})


def test_missing_profile(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        settings.load(tmp_path / "nope.toml", env={})


def test_profile_needs_ca_for_tls(tmp_path: Path) -> None:
    prof = node_config.Profile(wifi=[{"ssid": "a", "psk": "12345678"}], host="h")
    with pytest.raises(ConfigError, match="TLS needs the broker's CA"):
        prof.check()
    prof.ca = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match="not found"):
        prof.check()


def test_password_hash_roundtrip_and_errors() -> None:
    h = hash_password("secret", salt=b"0123456789ab")
    assert h.startswith("$7$1000$MDEyMzQ1Njc4OWFi$") and verify_password("secret", h) and not verify_password("Secret", h)
    assert hash_password("secret") != hash_password("secret")  # salted
    for bad in ("plain", "$6$1$a$b", "$7$x$AAAA$AAAA", "$7$10$!!!$AAAA"):
        with pytest.raises(PasswdError):
            verify_password("secret", bad)


def test_ids_and_secrets() -> None:
    taken = {f"{i:08x}" for i in range(100)}
    ids = {new_device_id(taken) for _ in range(200)}
    assert ids.isdisjoint(taken) and all(check_device_id(i) == i for i in ids)
    with pytest.raises(IdentityError, match="8 lowercase hex"):
        check_device_id("00C0FFEE")

    class Everything:
        def __contains__(self, _: object) -> bool:
            return True

    with pytest.raises(IdentityError, match="no free device id"):
        new_device_id(Everything())
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100 and all(len(s) == 32 for s in secrets)


def test_private_files_are_0600_from_the_start(tmp_path: Path) -> None:
    path = atomic_write(tmp_path / "sub" / "secret", "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "x"
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temp file left behind


def test_queue_limit_scales_with_the_fleet() -> None:
    assert broker.queue_limit(0) == broker.MIN_QUEUE
    # 500 nodes x (60 readings + 12 status) per hour x 72 h x 2 headroom
    assert broker.queue_limit(500) == 2 * 500 * 72 * 72
    assert broker.queue_limit(500) > 1000


def test_cfg_counts_changes() -> None:
    spec = node_config.NodeSpec("air", "A")
    prof = node_config.Profile(wifi=[{"ssid": "a", "psk": "12345678"}], host="h")
    c1 = node_config.build("00c0ffee", "pw", 1, spec, prof, 0)
    assert node_config.next_cfg(None, c1) == 1
    c1["cfg"] = 1
    assert node_config.next_cfg(c1, dict(c1, cfg=0)) == 1
    assert node_config.next_cfg(c1, dict(c1, site="B")) == 2
    assert node_config.parse_existing(b"\xff") is None and node_config.parse_existing(b'{"v": 2}') is None
    assert node_config.parse_existing(json.dumps(c1).encode()) == c1


@pytest.mark.parametrize("output,message", [
    ("boot chatter\n", "found 0"),
    ("KS_SELFTEST {}\nKS_SELFTEST {}\n", "found 2"),
    ("KS_SELFTEST {not json\n", "not JSON"),
    ('KS_SELFTEST {"ok": "yes", "checks": []}\n', "must be"),
    ('KS_SELFTEST {"ok": true, "checks": [{"name": 3, "ok": true}]}\n', "malformed check"),
])
def test_selftest_line_errors(output: str, message: str) -> None:
    with pytest.raises(selftest.SelfTestError, match=message):
        selftest.parse(output)


def test_selftest_trusts_checks_over_the_verdict() -> None:
    lying = selftest.parse('noise\nKS_SELFTEST {"ok": true, "checks": [{"name": "wifi", "ok": false, "detail": "x"}]}\n')
    assert not lying.ok and [c.name for c in lying.failed] == ["wifi"]
    assert not selftest.parse('KS_SELFTEST {"ok": true, "checks": []}').ok
    assert selftest.redact("pw=abc123 key=k", ["abc123", ""]) == "pw=<redacted> key=k"


def test_batch_file_parsing(tmp_path: Path) -> None:
    p = tmp_path / "n.csv"
    p.write_text("\ufeffkit,site,zone,lat,lon\nair,A,lez,48.1,16.3\n,,,,\ntraffic,B,,,\n")
    rows = batch.parse(p, default_port="/dev/ttyUSB0")
    assert [(r.line, r.port, r.spec.kit, r.spec.site, r.spec.lat) for r in rows] == [
        (2, "/dev/ttyUSB0", "air", "A", 48.1), (4, "/dev/ttyUSB0", "traffic", "B", None)]
    with pytest.raises(batch.BatchError, match="line 2: no port"):
        batch.parse(p)
    p.write_text("kit,site,colour\nair,A,red\n")
    with pytest.raises(batch.BatchError, match=r"unknown \['colour'\]"):
        batch.parse(p, "/dev/x")
    p.write_text("kit,site\n")
    with pytest.raises(batch.BatchError, match="lists no nodes"):
        batch.parse(p, "/dev/x")


def test_redaction_matches_every_escaped_form_of_a_secret() -> None:
    key = 'WIFI\\KEY"it\'s-é\n😀'
    forms = [key, repr(key), repr(repr(key)), json.dumps(key), json.dumps(key, ensure_ascii=False), repr(key.encode()),
             repr({"psk": key}), json.dumps({"wifi": [{"psk": key}]})]
    for form in forms:
        out = selftest.redact(f"before {form} after", [key])
        assert "KEY" not in out and out.startswith("before ") and out.endswith(" after"), (form, out)
    assert selftest.redact("WIFI and KEY alone are no secret", [key]) == "WIFI and KEY alone are no secret"


def test_accounts_cannot_look_like_nodes_or_collide() -> None:
    assert broker.Accounts().all == ("kerbside-collector", "kerbside-operator")
    for bad in (("0a0b0c0d",), ("x y",), ("a:b",), ("$SYS",), ("kerbside-operator",)):
        with pytest.raises(broker.AccountError):
            broker.Accounts(bad).check()
    with pytest.raises(broker.AccountError, match="ingest_users is empty"):
        broker.Accounts(()).check()


def test_reprovisioning_keeps_what_is_not_given_and_names_what_changes() -> None:
    from kerbside.core.registry import Device

    dev = Device(id="0a0a0a01", kit="air", site="Ringstrasse 12", zone="lez-inner", lat=48.2, lon=16.37)
    assert node_config.NodeSpec().check().over(dev) == node_config.NodeSpec("air", "Ringstrasse 12", "lez-inner", 48.2, 16.37)
    moved = node_config.NodeSpec(zone="", lat=48.3, lon=16.4).check().over(dev)
    assert node_config.registry_changes(dev, moved) == ["zone: 'lez-inner' -> ''", "lat: 48.2 -> 48.3", "lon: 16.37 -> 16.4"]
    with pytest.raises(ConfigError, match="pass --kit and --site"):
        node_config.NodeSpec(zone="x").for_new_node()
    prof = node_config.Profile(wifi=[{"ssid": "city", "psk": "new-key-123"}], host="mqtt.city.example")
    old = node_config.build("0a0a0a01", "pw", 1, node_config.NodeSpec("air", "A", "z"), prof, 1)
    old["wifi"] = [{"ssid": "city", "psk": "old-key-123"}]
    new = node_config.build("0a0a0a01", "pw", 1, node_config.NodeSpec("air", "B", "z"), prof, 1)
    changes = node_config.config_changes(old, new)
    assert changes == ["node site: 'A' -> 'B'", "node Wi-Fi key for 'city' changes"]
    assert not any("key-123" in c for c in changes)


def _outcome(device_id: str, board: str) -> object:
    from kerbside.provisioning.provision import Outcome

    return Outcome("/dev/ttyUSB0", device_id=device_id, board=[board])


def test_one_port_batch_asks_before_each_next_row_and_refuses_a_board_twice() -> None:
    from kerbside.provisioning.provision import SameBoardError

    spec = node_config.NodeSpec("air", "x")
    rows = [batch.Row(n, "/dev/ttyUSB0", spec) for n in (2, 3, 4)]
    plugged = iter(["board-1", "board-1", "board-2"])  # the technician forgot to swap once
    current = {"board": ""}
    asked: list[tuple[int, str]] = []

    def next_node(row: batch.Row, why: str) -> None:
        asked.append((row.line, why))
        try:
            current["board"] = next(plugged)
        except StopIteration:
            raise batch.NoNextNode(f"line {row.line}: no next node") from None

    def provision_one(row: batch.Row, seen: batch.Seen):  # type: ignore[no-untyped-def]
        if current["board"] in seen:
            raise SameBoardError(f"already {seen[current['board']]}")
        return _outcome(f"id-{current['board']}", current["board"])

    current["board"] = "board-0"
    results = batch.run(rows, provision_one, next_node=next_node)
    assert [r.outcome.device_id if r.outcome else r.error for r in results] == ["id-board-0", "id-board-1", "id-board-2"]
    assert asked == [(3, ""), (4, ""), (4, "already line 3 (id-board-1)")]
    stopped = batch.run(rows, provision_one, next_node=lambda row, why: (_ for _ in ()).throw(batch.NoNextNode("gone")))
    assert [r.error for r in stopped] == ["", "gone", "not provisioned: gone"]
    with pytest.raises(batch.BatchError, match="cannot go in parallel"):
        batch.run(rows, provision_one, parallel=True)
