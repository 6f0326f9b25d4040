# kerbside node firmware - self-test after provisioning.
#
# The provisioning tool runs `from knode import selftest; selftest.run()` over
# the raw REPL and parses the ONE line "KS_SELFTEST {json}". So run() never
# raises, never prints anything else, and finishes well inside 60 s: each
# check has its own bound and a failed prerequisite skips the later checks.
import json

try:
    import asyncio
except ImportError:  # pragma: no cover
    asyncio = None

NAMES = ("config", "sensors", "wifi", "broker", "publish")
NO_HW = "no hardware"


def _check(out, name, ok, detail):
    out.append({"name": name, "ok": bool(ok), "detail": str(detail)[:200]})


def _err(e):
    return "%s: %s" % (type(e).__name__, e)


def run(board=None, path="/config.json", wifi_ms=20000, broker_s=10):
    checks = []
    try:
        _run(checks, board, path, wifi_ms, broker_s)
    except BaseException as e:  # the one line must always come out
        done = set(c["name"] for c in checks)
        for n in NAMES:
            if n not in done:
                _check(checks, n, False, "aborted: " + _err(e))
    ok = len(checks) == len(NAMES) and all(c["ok"] for c in checks)
    line = "KS_SELFTEST " + json.dumps({"ok": ok, "checks": checks})
    print(line)
    return ok


def _run(checks, board, path, wifi_ms, broker_s):
    from knode import config, hal
    if board is None:
        board = hal.Board()
    cfg = None
    try:
        cfg = config.load(board.path(path))
        _check(checks, "config", True, "device %s kit %s cfg %d" % (cfg["device"], cfg["kit"], cfg["cfg"]))
    except Exception as e:
        _check(checks, "config", False, e)
    if board.machine is None:
        _check(checks, "sensors", False, NO_HW)
    elif cfg is None:
        _check(checks, "sensors", False, "needs a valid config")
    elif asyncio is None or not hasattr(asyncio, "run"):
        _check(checks, "sensors", False, "no asyncio.run")
    else:
        try:
            ok, detail = asyncio.run(_probe(board, cfg))
            _check(checks, "sensors", ok, detail)
        except Exception as e:
            _check(checks, "sensors", False, _err(e))
    if board.network is None:
        for n in ("wifi", "broker", "publish"):
            _check(checks, n, False, NO_HW)
        return
    if cfg is None or asyncio is None or not hasattr(asyncio, "run"):
        for n in ("wifi", "broker", "publish"):
            _check(checks, n, False, "needs a valid config" if cfg is None else "no asyncio.run")
        return
    asyncio.run(_network(checks, board, cfg, wifi_ms, broker_s))


async def _network(checks, board, cfg, wifi_ms, broker_s):
    from knode import net, wire
    try:
        joined = await net.join_wifi(board, cfg, wifi_ms)
        _check(checks, "wifi", joined, ("rssi %d dBm" % net.rssi(board)) if joined else "no configured network joined")
    except Exception as e:
        joined = False
        _check(checks, "wifi", False, _err(e))
    if not joined:
        _check(checks, "broker", False, "needs wifi")
        _check(checks, "publish", False, "needs wifi")
        return
    m = cfg["mqtt"]
    client = None
    try:
        client = net.client_for(board, cfg, timeout=broker_s)
        await asyncio.wait_for(client.connect(m["host"], m["port"]), broker_s + 1)
        _check(checks, "broker", True, "%s:%d" % (m["host"], m["port"]))
    except Exception as e:
        _check(checks, "broker", False, _err(e))
        _check(checks, "publish", False, "needs the broker")
        if client is not None:
            await client.aclose()
        return
    try:
        status = {"v": 1, "id": wire.device_bytes(cfg["device"]), "online": True, "t": board.time(),
                  "synced": board.time() > 1700000000, "kit": wire.KITS[cfg["kit"]], "cfg": cfg["cfg"]}
        payload = wire.encode_status(status)
        await client.publish(wire.topic(cfg["device"], "status"), payload, 1, True)
        _check(checks, "publish", True, "status acknowledged (%d bytes)" % len(payload))
    except Exception as e:
        _check(checks, "publish", False, _err(e))
    await client.disconnect()


async def _probe(board, cfg):
    """Self-test: (ok, detail) after one short read of every sensor of the kit."""
    from knode import sensors
    kit = sensors.make(board, cfg)
    if cfg["kit"] == "traffic":
        await board.sleep_ms(500)
        data = kit.uart.read()
        alive = kit.parser.feed(data, kit.agg.vehicle) if data else 0
        return bool(alive), "detector answered" if alive else "detector silent on UART"
    got = []
    bad = []
    kit._power(True)
    (got if await kit._capture() else bad).append("pm")
    (got if await kit.sht.read() else bad).append("sht3x")
    if kit.scd is not None:
        await kit.scd.start()
        await board.sleep_ms(5500)  # the first periodic measurement
        (got if await kit.scd.read() else bad).append("scd4x")
    if kit.no2 is not None:
        (got if await kit.no2.read(None) is not None else bad).append("no2")
    return not bad, "ok: %s; failed: %s" % (",".join(got) or "-", ",".join(bad) or "-")
