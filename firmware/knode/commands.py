# kerbside node firmware - commands from kerbside/v1/<id>/cmd, acknowledged on .../ack.
#
# Config-changing commands carry the config version they produce ("cfg").
# A version not newer than the one in force is acknowledged as already
# applied without changing anything: QoS1 may deliver a command twice.
from knode import cbor, config, wire

MAX_ERR = 200


def ack_payload(node, cmd, ok, err=None):
    m = {"v": 1, "id": node.dev, "cmd": cmd, "ok": ok, "cfg": node.cfg["cfg"]}
    if err:
        m["err"] = err[:MAX_ERR]
    return wire.encode_status(m)


async def handle(node, client, payload):
    """Run one command and publish its ack. payload None: too large to hold in RAM (refused, once)."""
    cmd = 0
    try:
        if payload is None:
            raise ValueError("too large for the node")
        c = cbor.loads(payload)
        if not isinstance(c, dict) or c.get("v") != 1 or not isinstance(c.get("cmd"), int):
            raise ValueError("not a v1 command map")
        cmd = c["cmd"]
        err = apply(node, c)
    except Exception as e:
        err = "bad command: %s" % e
    await client.publish(wire.topic(node.did, "ack"), ack_payload(node, cmd, err is None, err), 1)


def _new_cfg(node, c):
    v = c.get("cfg")
    if v is None:
        return node.cfg["cfg"] + 1
    if not isinstance(v, int) or v < 0:
        raise ValueError("cfg must be an unsigned int")
    return v


def apply(node, c):
    """Run one command; None on success or an error text for the ack."""
    op = c.get("op")
    args = c.get("args") or {}
    if not isinstance(args, dict):
        return "args must be a map"
    if op == "status":
        node.status_due = True
        return None
    if op == "reboot":
        node.reboot_requested = True
        return None
    if op in ("set_interval", "set_calibration"):
        ver = _new_cfg(node, c)
        if ver <= node.cfg["cfg"]:
            return None  # already applied (redelivery)
        new = dict(node.cfg)
        if op == "set_interval":
            for k in args:
                if k not in ("period", "sample", "status_every"):
                    return "unknown interval key " + str(k)
                new[k] = args[k]
            if "period" in args and "sample" not in args and new["sample"] > new["period"]:
                new["sample"] = new["period"]
        else:
            cal = dict(node.cfg["cal"])
            for k in args:
                v = args[k]
                if isinstance(v, str):
                    try:
                        v = float(v)  # CBOR floats are not on the wire: decimals come as text
                    except ValueError:
                        return "calibration %s: not a number" % k
                elif not isinstance(v, (int, list)):
                    return "calibration %s must be a number or list" % k
                cal[k] = v
            new["cal"] = cal
        new["cfg"] = ver
        try:
            config.validate(new)
        except config.ConfigError as e:
            return str(e)
        config.save(new, node.board.path(config.PATH))
        node.cfg.update(new)
        if op == "set_calibration":
            node.kit.cal = node.cfg["cal"]
            if getattr(node.kit, "no2", None) is not None:
                node.kit.no2.cal = node.cfg["cal"]
        return None
    if op == "ota":
        from knode import ota  # imported on first use: it holds the signature check's code
        return ota.command(node, args)
    return "unknown op %r" % (op,)
