# kerbside node firmware - entry point on the ESP32 (after boot.py).
#
# Why it is written this way: no update can replace this file (knode.ota
# refuses every path outside /lib/knode), so it is what brings a node back on
# the air whatever a release or a power cut left behind:
#  1. The watchdog starts before anything else is imported: a hang anywhere,
#     even while importing, resets the node.
#  2. The journal /ota.json (written by knode.ota) names the firmware to run:
#     an update's slot /fw/a or /fw/b, put first on sys.path (ahead of .frozen
#     and /lib, so a frozen build runs its update too), or "" for the
#     provisioned firmware. A release on trial that fails to import, raises
#     before its first status, has no status after TRIAL_S, or has used up
#     BOOTS boots (a hang the watchdog ended) is rolled back here.
#  3. Outside a trial, an application that cannot start gets safe mode
#     (knode.safemode): status and commands keep working, so a signed update
#     can fix the node. If even safe mode cannot start from an update, the
#     provisioned firmware is restored.
# The journal is replaced by an atomic rename, so a power cut at any point
# leaves the old journal or the new one; see docs/firmware.md "Updates".
import json
import os
import sys

JOURNAL = "/ota.json"
BOOTS = 2        # boots a release on trial gets: one power cut does not roll a good release back
TRIAL_S = 600    # seconds a release on trial has to publish its first status
WDT_MS = 120000  # as knode.node.WDT_MS; the node's own watchdog task takes it over


def read(root):
    try:
        with open(root + JOURNAL) as f:
            j = json.loads(f.read())
        return j if isinstance(j, dict) else None
    except (OSError, ValueError):
        return None


def write(root, j):
    path = root + JOURNAL
    with open(path + ".tmp", "w") as f:
        f.write(json.dumps(j))
    os.rename(path + ".tmp", path)


def rollback(root, j, why):
    """Back to the firmware that ran before the update: its slot is kept until the update is healthy."""
    back = {"cur": j.get("prev", ""), "prev": "", "state": "ok", "boots": 0, "seq": j.get("pseq", 0),
            "fw": j.get("pfw", ""), "seen": j.get("seen", 0),
            "note": ("rolled back %s (%s): %s" % (j.get("fw"), j.get("seq"), why))[:200]}
    write(root, back)
    return back


def choose(root=""):
    """The journal for this boot, after counting a trial boot or rolling back a trial out of boots."""
    j = read(root)
    if j is None or not j.get("cur"):
        return j or {"cur": ""}
    if j.get("state") == "trial":
        if j.get("boots", 0) >= BOOTS:
            return rollback(root, j, "no status in %d boots" % BOOTS)
        j["boots"] = j.get("boots", 0) + 1
        write(root, j)
    return j


def slot_dir(root, j):
    return root + "/fw/" + j["cur"] if j.get("cur") else ""


def _reset(board):
    if board is not None:
        board.reset()
    try:
        import machine
        machine.reset()
    except ImportError:
        pass
    raise SystemExit("reset")


def _log(e):
    if hasattr(sys, "print_exception"):
        sys.print_exception(e)
    else:  # CPython (tests)
        import traceback
        traceback.print_exception(e)


def _why(e):
    return ("%s: %s" % (type(e).__name__, e))[:160]


def _watchdog():
    try:
        import machine
    except ImportError:
        return None
    return machine.WDT(timeout=WDT_MS)


async def _supervise(node, trial):
    """Run the application; on trial, fail it if no status came within TRIAL_S."""
    import asyncio
    task = asyncio.create_task(node.run())
    if trial:
        waited = 0
        while not node.healthy and not task.done():
            if waited >= TRIAL_S:
                task.cancel()
                raise RuntimeError("no status within %d s" % TRIAL_S)
            await node.board.sleep_ms(1000)
            waited += 1
    await task


def start(root="", board=None):
    """Boot the node; never returns on a device (it ends in a reset). `board`: the simulator's, in tests."""
    wdt = _watchdog()
    j = choose(root)
    trial = j.get("state") == "trial"
    where = slot_dir(root, j)
    if where and where not in sys.path:
        sys.path.insert(0, where)
    node = None
    try:
        if board is None:
            from knode import hal
            board = hal.Board(root)
        from knode import node as app
        came = getattr(app, "__file__", ".frozen")  # a frozen module may have no __file__
        if where and not came.startswith(where + "/"):
            raise ImportError("knode.node comes from %s, not the update in %s" % (came, where))
        node = app.Node(board)
        import asyncio
        asyncio.run(_supervise(node, trial))
    except Exception as e:
        _log(e)
        if trial and (node is None or not node.healthy):
            rollback(root, j, _why(e))
        elif node is None or not node.healthy:
            safe(root, j, board, wdt, _why(e))
    _reset(board)


def safe(root, j, board, wdt, why):
    """The application cannot start: keep the link up without it; failing that, restore the provisioned firmware."""
    try:
        if board is None:
            from knode import hal
            board = hal.Board(root)
        from knode import safemode
        safemode.run(board, wdt, why, j.get("fw", ""))
    except Exception as e:
        _log(e)
        if j.get("cur"):
            write(root, {"cur": "", "prev": "", "state": "ok", "boots": 0, "seq": 0, "fw": "",
                         "seen": j.get("seen", 0), "note": ("%s cannot start: %s" % (j.get("fw"), why))[:200]})
        else:
            import time
            time.sleep(30)  # nothing else to fall back on: retry, slowly, until someone brings a laptop


if __name__ == "__main__":
    start()
