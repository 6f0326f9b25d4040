"""Pure logic: profiles, hashes, ids, queue sizing, config versions, self-test lines, batch files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from kerbside.core.files import atomic_write
from kerbside.provisioning import batch, broker, node_config, selftest
from kerbside.provisioning.identity import IdentityError, check_device_id, new_device_id, new_secret
from kerbside.provisioning.node_config import ConfigError, load_profile
from kerbside.provisioning.passwd import PasswdError, hash_password, verify_password


def test_profile_from_toml(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    p = tmp_path / "depot.toml"
    p.write_text('[[wifi]]\nssid = "city-iot"\npsk = "abcdefgh"\n[[wifi]]\nssid = "depot"\npsk = ""\n'
                 '[mqtt]\nhost = "mqtt.city.example"\nport = 8884\nca = "ca.pem"\n[node]\nperiod = 30\nsample = 5\n')
    p.chmod(0o600)
    prof = load_profile(p).check()
    assert prof.wifi == [{"ssid": "city-iot", "psk": "abcdefgh"}, {"ssid": "depot", "psk": ""}]
    assert (prof.host, prof.port, prof.ca, prof.period, prof.sample, prof.status_every) == (
        "mqtt.city.example", 8884, tmp_path / "ca.pem", 30, 5, 300)
    assert prof.warnings == []
    p.chmod(0o644)
    assert "chmod 600" in load_profile(p).warnings[0]


@pytest.mark.parametrize("text,message", [
    ("[mqtt\nhost=1", "not valid TOML"),
    ("wifi = 3", "wifi must be a list"),
    ("[mqtt]\nport = 'eighty'", "invalid literal"),
])
def test_bad_profiles(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "depot.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_profile(p)


def test_missing_profile(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_profile(tmp_path / "nope.toml")


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
