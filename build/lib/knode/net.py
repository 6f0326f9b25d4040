# kerbside node firmware - Wi-Fi join, TLS context and the MQTT client for a config.

from knode import wire
from knode.mqtt import MQTTClient


def tls_context(board, mcfg):
    """An SSL context that verifies the broker against the provisioned CA, or None without TLS.
    PROTOCOL_TLS_CLIENT verifies the certificate and host name by default on MicroPython and CPython."""
    if not mcfg.get("tls"):
        return None
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca = mcfg.get("ca")
    if ca:
        with open(board.path(ca), "rb") as f:
            ctx.load_verify_locations(cadata=f.read())
    return ctx


def last_will(cfg):
    did = cfg["device"]
    payload = wire.encode_status({"v": 1, "id": wire.device_bytes(did), "online": False})
    return (wire.topic(did, "status"), payload, True)


def client_for(board, cfg, on_message=None, timeout=10):
    m = cfg["mqtt"]
    return MQTTClient(cfg["device"], m.get("user") or cfg["device"], m.get("password"), m.get("keepalive", 60),
                      last_will(cfg), False, on_message, timeout, tls_context(board, m))


async def join_wifi(board, cfg, timeout_ms=20000):
    """Try each configured network in turn; True once an address is held."""
    wlan = board.wlan()
    if wlan is None:
        return False
    if wlan.isconnected():
        return True
    for net in cfg["wifi"]:
        try:
            wlan.connect(net["ssid"], net.get("psk", ""))
        except OSError:
            continue
        waited = 0
        while waited < timeout_ms:
            if wlan.isconnected():
                return True
            await board.sleep_ms(250)
            waited += 250
        try:
            wlan.disconnect()
        except OSError:
            pass
    return False


def rssi(board):
    wlan = board.wlan()
    try:
        r = wlan.status("rssi") if wlan is not None else 0
        return max(-127, min(0, int(r)))
    except Exception:
        return 0

