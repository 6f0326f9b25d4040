# A self-test that can pass on the emulated board (the MicroPython VM has no
# sensors, radio or broker), for the provisioning tests of the happy path:
# re-provisioning, identity, rotation, the CLI's PASS table, a batch. The real
# firmware/knode/selftest.py reports "no hardware" there; its output goes
# through provisioning's parser in tests/firmware/test_fw_selftest.py and in
# test_prov_provision.py::test_failed_check_shows_in_the_result. It checks what
# an emulator can: that /config.json and /ca.pem are what the firmware needs.
import json

REQUIRED = ("v", "device", "kit", "site", "zone", "wifi", "mqtt", "ntp", "period", "sample",
            "status_every", "credential", "cfg", "cal")


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
    checks = [{"name": "config", "ok": ok, "detail": detail}]
    for name in ("sensors", "wifi", "broker", "publish"):
        checks.append({"name": name, "ok": True, "detail": "emulator: not exercised"})
    print("KS_SELFTEST " + json.dumps({"ok": all(c["ok"] for c in checks), "checks": checks}))
