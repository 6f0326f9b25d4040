# kerbside node firmware - over-the-air updates: the journal and the end of a trial.
#
# Every boot needs this much (the first status acknowledged by the broker ends
# a trial, knode.node calls healthy()), so it is kept small. Receiving and
# installing a signed release is knode.ota_receive, imported only while an
# `ota` command is handled and dropped again afterwards (~11 KB of heap with
# knode.p256 that a node does not carry between updates). How updates work,
# and why, is there and in docs/firmware.md "Updates".
#
# The journal /ota.json: {"cur": running slot ("a", "b", or "" for the
# provisioned firmware), "prev": the slot to roll back to while on trial,
# "state": "trial" or "ok", "boots": trial boots so far, "seq"/"fw": the
# running release, "pseq"/"pfw": the previous one, "seen": the newest release
# that became healthy (no older one is accepted), "note": why the last
# rollback happened}. main.py reads and writes the same keys at boot.
import json
import os
import sys

JOURNAL = "/ota.json"
FW = "/fw"
SLOTS = ("a", "b")


# -- journal (main.py reads and writes the same keys) ------------------------------------------
def read_journal(board):
    """The journal, or the state of a node that never installed an update."""
    try:
        with open(board.path(JOURNAL)) as f:
            j = json.loads(f.read())
        if isinstance(j, dict):
            return j
    except (OSError, ValueError):
        pass
    return {"cur": "", "state": "ok", "seq": 0, "seen": 0, "fw": ""}


def write_journal(board, j):
    """Atomically: a power cut leaves the old journal or the new one (LittleFS renames are atomic)."""
    path = board.path(JOURNAL)
    with open(path + ".tmp", "w") as f:
        f.write(json.dumps(j))
        sync_file(f)
    os.rename(path + ".tmp", path)


def sync_file(f):
    """LittleFS commits a file on close; CPython (the simulator) needs fsync for the same promise."""
    if hasattr(os, "fsync"):
        f.flush()
        os.fsync(f.fileno())


def healthy(board):
    """The running firmware published a status the broker acknowledged: end its trial and free the old slot."""
    j = read_journal(board)
    if j.get("state") != "trial":
        return
    prev = j.get("prev", "")
    j["state"] = "ok"
    j["prev"] = ""
    j["boots"] = 0
    j["seen"] = max(j.get("seen", 0), j.get("seq", 0))
    write_journal(board, j)
    if prev and prev != j.get("cur"):
        remove_tree(board.path(FW + "/" + prev))


# -- files -----------------------------------------------------------------------------------
def is_dir(path):
    try:
        return os.stat(path)[0] & 0x4000 != 0
    except OSError:
        return None  # absent


def remove_tree(path):
    """Delete a directory and everything in it; absent is fine (idempotent after a power cut)."""
    if is_dir(path) is None:
        return
    for name in os.listdir(path):
        p = path + "/" + name
        if is_dir(p):
            remove_tree(p)
        else:
            os.remove(p)
    os.rmdir(path)


UNLOAD = sys.implementation.name == "micropython"  # CPython (simulator, tests) keeps modules: reloading only costs time


def command(node, args):
    """The `ota` op (knode.commands): None when done, else the error text for the ack."""
    from knode import ota_receive
    try:
        return ota_receive.command(node, args)
    finally:
        if UNLOAD and getattr(node, "ota_update", None) is None:
            _unload()


def _unload():
    """Forget the receiving code until the next update (the modules are imported again from flash then)."""
    import knode
    for name in ("ota_receive", "p256"):
        sys.modules.pop("knode." + name, None)
        if name in knode.__dict__:
            delattr(knode, name)
