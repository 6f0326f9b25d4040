# kerbside node firmware - over-the-air update of application files.
#
# A command carries one file per "ota" op: {"path": "/lib/knode/x.py",
# "data": bytes, "sha256": 32 bytes, "last": bool}. Files are staged as
# <path>.new and verified against their SHA-256 before anything is replaced.
# On "last", every staged file is swapped in (old one kept as <path>.bak),
# /ota.json records {"files": [...], "tries": 0} and the node reboots. The
# boot that follows must reach a connected, status-publishing state; if it
# crashes or hangs instead (watchdog), the next boot sees tries >= 1 and
# restores every .bak: rollback.
import json
import os

MARK = "/ota.json"
MAX_FILE = 12000  # bytes per command: fits the MQTT client's incoming limit


def _sha256(data):
    import hashlib
    return hashlib.sha256(data).digest()


def stage(node, args):
    p = args.get("path")
    data = args.get("data")
    sha = args.get("sha256")
    if not isinstance(p, str) or not p.startswith("/") or ".." in p:
        return "ota: bad path"
    if not isinstance(data, bytes) or len(data) > MAX_FILE:
        return "ota: data must be bytes <= %d" % MAX_FILE
    if _sha256(data) != sha:
        return "sha256 mismatch"
    b = node.board
    with open(b.path(p) + ".new", "wb") as f:
        f.write(data)
    staged = getattr(node, "ota_staged", [])
    if p not in staged:
        staged.append(p)
    node.ota_staged = staged
    if args.get("last"):
        swap(b, staged)
        node.reboot_requested = True
    return None


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def swap(board, paths):
    for p in paths:
        full = board.path(p)
        if _exists(full):
            os.rename(full, full + ".bak")
        os.rename(full + ".new", full)
    _write(board, {"files": paths, "tries": 0})


def _write(board, mark):
    tmp = board.path(MARK) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(mark, f)
    os.rename(tmp, board.path(MARK))


def _read(board):
    try:
        with open(board.path(MARK)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def on_boot(board):
    """Before importing the application: roll back an update that never became healthy.
    Returns "rollback", "trial" or None."""
    mark = _read(board)
    if mark is None:
        return None
    if mark.get("tries", 0) >= 1:
        for p in mark["files"]:
            full = board.path(p)
            if _exists(full + ".bak"):
                os.rename(full + ".bak", full)
            elif _exists(full):
                os.remove(full)  # a file the update added
        os.remove(board.path(MARK))
        return "rollback"
    mark["tries"] = mark.get("tries", 0) + 1
    _write(board, mark)
    return "trial"


def healthy(board):
    """Connected and reporting: keep the update, drop the backups."""
    mark = _read(board)
    if mark is None:
        return
    for p in mark["files"]:
        full = board.path(p) + ".bak"
        if _exists(full):
            os.remove(full)
    os.remove(board.path(MARK))
