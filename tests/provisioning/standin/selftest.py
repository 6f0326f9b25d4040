# Stand-in for firmware/knode/selftest.py (not written yet) for the emulated
# board, which has no sensors, radio or broker. It checks what an emulator
# can: that /config.json and /ca.pem are what the firmware needs. A test
# makes a check fail by creating /emul/fail_<name>.
import json

REQUIRED = ("v", "device", "kit", "site", "zone", "wifi", "mqtt", "ntp", "period", "sample",
            "status_every", "credential", "cfg", "cal")


def _forced(name):
    try:
        open("/emul/fail_" + name).close()
        return True
    except OSError:
        return False


def _config():
    try:
        c = json.load(open("/config.json"))
    except Exception as e:
        return False, "cannot read /config.json: " + repr(e)
    missing = [k for k in REQUIRED if k not in c]
    if missing:
        return False, "missing " + ",".join(missing)
    if c["mqtt"]["user"] != c["device"] or len(c["device"]) != 8:
        return False, "mqtt user is not the device id"
    try:
        pem = open(c["mqtt"]["ca"]).read()
    except OSError:
        return False, "CA " + c["mqtt"]["ca"] + " missing"
    if not pem.startswith("-----BEGIN CERTIFICATE-----"):
        return False, "CA is not a PEM certificate"
    return True, c["device"] + " " + c["kit"] + " at " + c["site"]


def run():
    ok, detail = _config()
    checks = [{"name": "config", "ok": ok and not _forced("config"), "detail": detail}]
    for name in ("sensors", "wifi", "broker", "publish"):
        bad = _forced(name)
        checks.append({"name": name, "ok": not bad, "detail": "forced failure" if bad else "emulator: not exercised"})
    print("KS_SELFTEST " + json.dumps({"ok": all(c["ok"] for c in checks), "checks": checks}))
