# kerbside node firmware - the provisioned configuration (/config.json).
#
# The provisioning tool writes it; commands change parts of it. Writes go to
# a temporary file renamed over the old one, so a power cut leaves either the
# old or the new config, never half of one. docs/firmware.md documents keys.
import json
import os

from knode import wire

PATH = "/config.json"
# "ntp": [] means the broker's host: the city runs its own time server there (the NTP Pool's
# rules forbid a fleet defaulting to pool.ntp.org without a vendor zone). "board": None means
# the chip the node runs on (knode.pins).
DEFAULTS = {
    "v": 1, "site": "", "zone": "", "ntp": [], "period": 60, "sample": 10,
    "status_every": 300, "credential": 1, "cfg": 1, "cal": {}, "pins": {}, "buffer_kb": 512, "board": None,
}
MQTT_DEFAULTS = {"port": 8883, "tls": True, "keepalive": 60, "ca": "/ca.pem", "timeout": 10}


class ConfigError(ValueError):
    pass


def validate(cfg):
    """Fill defaults and check types; raises ConfigError naming the first bad key."""
    if not isinstance(cfg, dict):
        raise ConfigError("config is not a JSON object")
    if cfg.get("v", 1) != 1:
        raise ConfigError("v: unsupported config format %r" % cfg.get("v"))
    dev = cfg.get("device")
    if not isinstance(dev, str) or len(dev) != 8 or any(c not in wire.HEX for c in dev):
        raise ConfigError("device: need 8 lowercase hex digits")
    if cfg.get("kit") not in wire.KITS:
        raise ConfigError("kit: need 'air' or 'traffic'")
    for k in DEFAULTS:
        if k not in cfg:
            v = DEFAULTS[k]
            cfg[k] = dict(v) if isinstance(v, dict) else (list(v) if isinstance(v, list) else v)
    wifi = cfg.get("wifi")
    if not isinstance(wifi, list) or not wifi:
        raise ConfigError("wifi: need a list of {ssid, psk}")
    for w in wifi:
        if not isinstance(w, dict) or not isinstance(w.get("ssid"), str):
            raise ConfigError("wifi: each entry needs an ssid")
    m = cfg.get("mqtt")
    if not isinstance(m, dict) or not isinstance(m.get("host"), str) or not m["host"]:
        raise ConfigError("mqtt.host: missing")
    for k in MQTT_DEFAULTS:
        m.setdefault(k, MQTT_DEFAULTS[k])
    m.setdefault("user", dev)
    brokers = m.setdefault("brokers", [[m["host"], m["port"]]])
    if not isinstance(brokers, list) or not brokers:
        raise ConfigError("mqtt.brokers: need a list of [host, port]")
    for h in brokers:
        if (not isinstance(h, list) or len(h) != 2 or not isinstance(h[0], str) or not h[0]
                or not isinstance(h[1], int) or not 0 < h[1] < 65536):
            raise ConfigError("mqtt.brokers: each entry is [host, port]")
    for k in ("period", "sample", "status_every"):
        if not isinstance(cfg[k], int) or cfg[k] <= 0:
            raise ConfigError(k + ": need a positive integer (seconds)")
    if cfg["period"] > 86400 or cfg["sample"] > cfg["period"]:
        raise ConfigError("period/sample: need sample <= period <= 86400")
    if cfg["period"] // cfg["sample"] > 3600:
        raise ConfigError("sample: more than 3600 samples per period")
    if not isinstance(cfg["cal"], dict) or not isinstance(cfg["pins"], dict):
        raise ConfigError("cal/pins: need objects")
    if not isinstance(cfg["ntp"], list) or any(not isinstance(h, str) or not h for h in cfg["ntp"]):
        raise ConfigError("ntp: need a list of time server names (empty: the broker's host)")
    if not isinstance(cfg["buffer_kb"], int) or cfg["buffer_kb"] < 16:
        raise ConfigError("buffer_kb: need an integer >= 16")
    if cfg["board"] is not None:
        from knode import pins
        pins.resolve(cfg["board"], cfg["kit"], cfg["pins"])  # a config for another board fails here, named
    return cfg


def ntp_servers(cfg):
    return cfg["ntp"] or [cfg["mqtt"]["host"]]


def load(path=PATH):
    _remove(path + ".tmp")  # a save() a power cut interrupted: the old config is still whole
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError:
        raise ConfigError(path + ": not found (provision the node first)")
    except ValueError:
        raise ConfigError(path + ": not valid JSON")
    return validate(cfg)


def save(cfg, path=PATH):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f)
    os.rename(tmp, path)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass

