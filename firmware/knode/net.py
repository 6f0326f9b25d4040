# kerbside node firmware - Wi-Fi join, TLS context and the MQTT client for a config.

from knode import wire
from knode.mqtt import MQTTClient


def tls_context(board, mcfg):
    """An SSL context that verifies the broker against the provisioned CA, or None without TLS.

    Made once per boot (the node keeps one client): parsing the CA and setting up mbedTLS again on
    every reconnect costs heap each time. micropython-lib's ssl.SSLContext starts with
    verify_mode = CERT_NONE, whatever the protocol, so CERT_REQUIRED is set here explicitly (on
    CPython it is already the default for PROTOCOL_TLS_CLIENT); the host name is checked against
    the certificate because the board passes server_hostname. Without a CA nothing could be
    verified: refuse rather than connect to whoever answers."""
    if not mcfg.get("tls"):
        return None
    import ssl
    ca = mcfg.get("ca")
    if not ca:
        raise ValueError("mqtt.tls needs mqtt.ca: without a CA the broker cannot be verified")
    with open(board.path(ca), "rb") as f:
        cadata = f.read()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cadata)
    return ctx


def last_will(cfg):
    did = cfg["device"]
    payload = wire.encode_status({"v": 1, "id": wire.device_bytes(did), "online": False})
    return (wire.topic(did, "status"), payload, True)


def client_for(board, cfg, on_message=None, timeout=None):
    m = cfg["mqtt"]
    return MQTTClient(board, cfg["device"], m.get("user") or cfg["device"], m.get("password"), m.get("keepalive", 60),
                      last_will(cfg), False, on_message, timeout or m.get("timeout", 10), tls_context(board, m))


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
