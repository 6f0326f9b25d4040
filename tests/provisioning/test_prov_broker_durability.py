"""The broker's durability settings are the ones the collector's batching assumes, in production and the dev stack alike.

Pure rendering, no process: tests/provisioning/test_prov_broker.py runs the rendered config in a real mosquitto.
"""

from __future__ import annotations

from pathlib import Path

from kerbside.core.settings import BatchConfig, MqttConfig
from kerbside.devstack import Mosquitto
from kerbside.provisioning import broker
from kerbside.provisioning.broker_dir import BrokerDir

ROOT = Path(__file__).resolve().parents[2]
DURABILITY = ("persistence", "autosave_interval", "autosave_on_changes", "persistent_client_expiration",
              "max_inflight_messages", "max_inflight_bytes", "per_listener_settings", "max_packet_size")


def directives(conf: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in conf.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            out.setdefault(key, []).append(value)
    return out


def production(mqtt: MqttConfig | None = None, fleet: int = 300) -> dict[str, list[str]]:
    files = BrokerDir(Path("/etc/mosquitto/kerbside")).files
    return directives(broker.render_conf(files, Path("/var/lib/mosquitto"), broker.queue_limit(fleet), mqtt=mqtt))


def test_production_durability_is_what_the_collector_assumes() -> None:
    d, mqtt, batch = production(), MqttConfig(), BatchConfig()
    assert d["persistence"] == ["true"] and d["persistence_location"] == ["/var/lib/mosquitto/"]
    # the broker may have receive_maximum messages in flight to the collector, so a batch of max_messages can fill
    assert d["max_inflight_messages"] == [str(mqtt.receive_maximum)]
    assert int(d["max_inflight_messages"][0]) >= batch.max_messages
    # the collector's backlog while it is down: sized for the fleet, never by bytes
    assert d["max_queued_messages"] == [str(broker.queue_limit(300))] and broker.queue_limit(300) >= broker.MIN_QUEUE
    # ... and by bytes only as much as that many legitimate messages take (a flood of big ones stops there)
    assert d["max_queued_bytes"] == [str(broker.queue_limit(300) * broker.BYTES_PER_QUEUED)]
    assert d["max_inflight_bytes"] == ["0"]
    # its persistent session outlives the session expiry it asks for
    (expiry,) = d["persistent_client_expiration"]
    assert expiry.endswith("h") and int(expiry[:-1]) * 3600 >= mqtt.session_expiry_s
    # a crash loses at most AUTOSAVE_S seconds of queued messages: a bounded, documented window
    assert d["autosave_interval"] == [str(broker.AUTOSAVE_S)] and d["autosave_on_changes"] == ["false"]
    assert 0 < broker.AUTOSAVE_S <= 60
    assert d["allow_anonymous"] == ["false", "false"] and d["listener"] == ["1883 127.0.0.1", "8883 0.0.0.0"]
    assert d["use_username_as_clientid"] == ["true", "true"] and d["per_listener_settings"] == ["true"]


def test_the_broker_follows_the_collectors_settings() -> None:
    d = production(MqttConfig(receive_maximum=2500, session_expiry_s=7 * 86400 + 1))
    assert d["max_inflight_messages"] == ["2500"] and d["persistent_client_expiration"] == ["169h"]


def test_the_dev_stack_has_the_production_durability_and_only_dev_additions(tmp_path: Path) -> None:
    conf = Mosquitto("mosquitto", tmp_path, 18830).config()
    dev, prod = directives(conf), production()
    assert {k: dev[k] for k in DURABILITY} == {k: prod[k] for k in DURABILITY}
    assert dev["max_queued_bytes"] == [str(int(dev["max_queued_messages"][0]) * broker.BYTES_PER_QUEUED)]
    assert dev["persistence_location"] == [f"{tmp_path}/"]
    assert dev["listener"] == ["18830 127.0.0.1"] and dev["allow_anonymous"] == ["true"]
    assert "NOT FOR PRODUCTION" in conf.splitlines()[0]
    only_dev = set(dev) - set(prod)
    assert only_dev <= {"user"}  # "user root" when the tests run as root, so persistence can write the state dir


def test_no_static_broker_config_ships_beside_the_renderer() -> None:
    """collector/deploy/mosquitto.conf only points at `kerbside broker-config`: no second set of settings to drift."""
    pointer = (ROOT / "collector" / "deploy" / "mosquitto.conf").read_text()
    assert directives(pointer) == {} and "kerbside broker-config" in pointer
