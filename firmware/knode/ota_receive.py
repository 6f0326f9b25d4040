# kerbside node firmware - receiving a signed release over the air (docs/firmware.md "Updates").
#
# Why this shape: the MQTT credentials that reach a node (collector, operator)
# must not be enough to run code on it, and no power cut or bad release may
# leave a node that cannot be reached again.
#
# - A release is a manifest {"v": 1, "seq", "fw", "files": [[path, size,
#   sha256], ...]} signed with the city's release key (ECDSA P-256 over
#   SHA-256 of CONTEXT + manifest, knode.p256). The node holds the public key
#   in /release.pub, written by provisioning over USB; no command can change it.
# - Only the firmware package may be updated: every path is /lib/knode/...py
#   or .mpy, so /config.json, /release.pub, /main.py and the rest are out of
#   reach even of a correctly signed release.
# - seq must exceed the newest release that ever became healthy on the node
#   ("seen"): an old signed release cannot be replayed to downgrade a node. A
#   release that was rolled back may be sent again (it changes nothing for
#   the better or the worse: it is rolled back again if it fails again).
# - Files are streamed chunk by chunk into a whole second copy of the package,
#   slot /fw/a or /fw/b (whichever is not running), hashing as they arrive;
#   nothing holds a whole file. The running firmware is never touched.
# - Installing is one atomic rename of the journal /ota.json, written only once
#   every file is on flash and re-read against its hash. main.py reads the
#   journal at boot, puts the slot first on sys.path (ahead of .frozen and
#   /lib, so frozen builds are updated too) and counts trial boots; a trial
#   firmware that fails to import, raises before its first status, has none
#   after TRIAL_S or is still on trial after BOOTS boots is rolled back by
#   main.py (it lives outside every slot, so a bad release cannot break its own
#   rollback). The first status acknowledged by the broker ends the trial
#   (knode.ota.healthy).
#
# Command args: {"manifest": bytes, "sig": bytes} starts an update (afresh,
# also when the same release was under way); then {"seq": int, "file": index,
# "off": offset, "data": bytes} in order, each at most MAX_CHUNK bytes. A chunk
# already written is acknowledged again without effect (QoS1 redelivery); any
# other out-of-order chunk gets an error naming the one expected, so a sender
# can resume. The chunk that completes the last file installs the release and
# reboots the node.
import hashlib
import os

from knode import cbor, p256
from knode.ota import FW, SLOTS, is_dir, read_journal, remove_tree, sync_file, write_journal

KEY = "/release.pub"
PACKAGE = "/lib/knode/"
CONTEXT = b"kerbside ota manifest v1\n"
MAX_CHUNK = 2048     # bytes of data per command: the node holds a chunk ~3x while decoding it
MAX_FILES = 64
MAX_FILE = 128 * 1024
MAX_TOTAL = 512 * 1024
SPARE = 64 * 1024    # flash left free after staging: the ring buffer and config writes need room
NAME = "abcdefghijklmnopqrstuvwxyz0123456789_"
NEEDED = ("__init__", "node", "ota", "ota_receive", "p256")  # main.py and the next update import these


class OTAError(ValueError):
    pass


# -- files -----------------------------------------------------------------------------------
def _mkdirs(path):
    cur = ""
    for part in path.split("/")[1:]:
        cur += "/" + part
        if is_dir(cur) is None:
            os.mkdir(cur)


def _free(board):
    try:
        st = os.statvfs(board.path("/"))
        return st[0] * st[4]
    except (AttributeError, OSError):
        return None  # unknown: the write itself will fail if flash is full


# -- manifest --------------------------------------------------------------------------------
def package_path(p):
    """The path inside the package ("drivers/pms.mpy") of a firmware file, or OTAError."""
    if not isinstance(p, str) or not p.startswith(PACKAGE):
        raise OTAError("ota: %r is outside the firmware (%s...)" % (p, PACKAGE))
    rel = p[len(PACKAGE):]
    if not (rel.endswith(".mpy") or rel.endswith(".py")):
        raise OTAError("ota: %r is not a Python module" % (p,))
    parts = rel[:rel.rfind(".")].split("/")
    if len(parts) > 3 or any(not s or any(c not in NAME for c in s) for s in parts):
        raise OTAError("ota: bad file name %r" % (p,))
    return rel


def check_manifest(raw, sig, key, seen):
    """Verify the signature, then the content: the decoded manifest, or OTAError."""
    if not isinstance(raw, bytes) or not isinstance(sig, bytes):
        raise OTAError("ota: manifest and sig must be bytes")
    if not p256.verify(key, hashlib.sha256(CONTEXT + raw).digest(), sig):
        raise OTAError("ota: bad signature")
    try:
        m = cbor.loads(raw)
    except ValueError:
        raise OTAError("ota: manifest is not CBOR")
    if not isinstance(m, dict) or m.get("v") != 1:
        raise OTAError("ota: not a v1 manifest")
    seq, fw, files = m.get("seq"), m.get("fw"), m.get("files")
    if not isinstance(seq, int) or seq <= 0 or not isinstance(fw, str) or len(fw) > 32:
        raise OTAError("ota: manifest needs seq > 0 and fw (text <= 32)")
    if seq <= seen:
        raise OTAError("ota: release %d is not newer than %d: refused (downgrade or replay)" % (seq, seen))
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise OTAError("ota: 1..%d files" % MAX_FILES)
    names = set()
    total = 0
    for f in files:
        if not isinstance(f, list) or len(f) != 3:
            raise OTAError("ota: each file is [path, size, sha256]")
        rel = package_path(f[0])
        if rel[:rel.rfind(".")] in names:
            raise OTAError("ota: %s twice" % f[0])
        names.add(rel[:rel.rfind(".")])
        if not isinstance(f[1], int) or not 0 <= f[1] <= MAX_FILE:
            raise OTAError("ota: %s: size must be 0..%d" % (f[0], MAX_FILE))
        if not isinstance(f[2], bytes) or len(f[2]) != 32:
            raise OTAError("ota: %s: sha256 must be 32 bytes" % f[0])
        total += f[1]
    if total > MAX_TOTAL:
        raise OTAError("ota: %d bytes of firmware, at most %d" % (total, MAX_TOTAL))
    for need in NEEDED:
        if need not in names:
            raise OTAError("ota: a release must contain knode/%s: main.py and the next update need it" % need)
    return m


def load_key(board):
    try:
        with open(board.path(KEY), "rb") as f:
            data = f.read()
    except OSError:
        raise OTAError("ota: no release key on this node (provision it with [node] release_key)")
    try:
        return p256.public_key(data)
    except ValueError as e:
        raise OTAError("ota: %s" % e)


# -- the update, one command at a time -------------------------------------------------------
class Update:
    """An update being received: where it goes and how far it got (RAM only: a reboot starts over)."""

    def __init__(self, board, m, slot):
        self.board = board
        self.seq = m["seq"]
        self.fw = m["fw"]
        self.files = m["files"]
        self.slot = slot
        self.i = 0
        self.off = 0
        self.h = hashlib.sha256()
        self.f = None

    def target(self, i):
        return self.board.path(FW + "/" + self.slot + "/knode/" + package_path(self.files[i][0]))

    def write(self, data):
        if self.f is None:
            path = self.target(self.i)
            _mkdirs(path[:path.rfind("/")])
            self.f = open(path, "wb")
        if data:
            self.f.write(data)
            self.h.update(data)
        self.off += len(data)

    def finish_files(self):
        """Close every file that is complete (including empty ones); OTAError on a hash mismatch."""
        while self.i < len(self.files) and self.off == self.files[self.i][1]:
            if self.f is None:
                self.write(b"")
            sync_file(self.f)
            self.f.close()
            self.f = None
            if self.h.digest() != self.files[self.i][2]:
                raise OTAError("ota: %s: sha256 mismatch" % self.files[self.i][0])
            self.i += 1
            self.off = 0
            self.h = hashlib.sha256()
        return self.i == len(self.files)

    def abort(self):
        if self.f is not None:
            self.f.close()
            self.f = None
        remove_tree(self.board.path(FW + "/" + self.slot))


def command(node, args):
    """The `ota` op (through knode.ota.command): None when done, else the error text for the ack."""
    try:
        if "manifest" in args:
            return begin(node, args.get("manifest"), args.get("sig"))
        if "file" in args:
            return chunk(node, args)
        return "ota: args need a manifest and sig, or a chunk (seq, file, off, data)"
    except OTAError as e:
        return str(e)


def begin(node, raw, sig):
    b = node.board
    j = read_journal(b)
    if j.get("state") == "trial":
        raise OTAError("ota: release %s is still on trial: wait for its first status" % j.get("seq"))
    m = check_manifest(raw, sig, load_key(b), j.get("seen", 0))
    u = getattr(node, "ota_update", None)
    if u is not None:  # a sender starting (again): start afresh; a sender that was mid-way resumes from the error
        u.abort()
    slot = SLOTS[1] if j.get("cur") == SLOTS[0] else SLOTS[0]
    node.ota_update = None
    for s in SLOTS:  # no trial, so only the running slot matters: the others are old updates or cut-off transfers
        if s != j.get("cur"):
            remove_tree(b.path(FW + "/" + s))
    free = _free(b)
    need = sum(f[1] for f in m["files"])
    if free is not None and free < need + SPARE:
        raise OTAError("ota: %d bytes free, the release needs %d + %d spare" % (free, need, SPARE))
    u = Update(b, m, slot)
    u.finish_files()  # empty leading files, if any
    node.ota_update = u
    return None


def chunk(node, args):
    u = getattr(node, "ota_update", None)
    if u is None:
        raise OTAError("ota: no update in progress: send the manifest first")
    i, off, data = args.get("file"), args.get("off"), args.get("data")
    if args.get("seq") != u.seq:
        raise OTAError("ota: release %s is not in progress (%d is)" % (args.get("seq"), u.seq))
    if not isinstance(i, int) or not isinstance(off, int) or not isinstance(data, bytes):
        raise OTAError("ota: a chunk needs file, off and data (bytes)")
    if (i, off) < (u.i, u.off):
        return None  # already written: a redelivery
    if (i, off) != (u.i, u.off):
        raise OTAError("ota: expected file %d at %d" % (u.i, u.off))
    if not 0 < len(data) <= MAX_CHUNK or off + len(data) > u.files[i][1]:
        raise OTAError("ota: chunk of %d bytes at %d: at most %d, within the file's %d"
                       % (len(data), off, MAX_CHUNK, u.files[i][1]))
    try:
        u.write(data)
        done = u.finish_files()
    except OTAError:
        node.ota_update = None
        u.abort()
        raise
    if done:
        node.ota_update = None
        install(u)
        node.reboot_requested = True
    return None


def install(u):
    """Re-read every file from flash against its hash, then switch the journal to the new slot (on trial)."""
    b = u.board
    for i in range(len(u.files)):
        h = hashlib.sha256()
        with open(u.target(i), "rb") as f:
            while True:
                block = f.read(512)
                if not block:
                    break
                h.update(block)
        if h.digest() != u.files[i][2]:
            u.abort()
            raise OTAError("ota: %s reads back wrong from flash" % u.files[i][0])
    j = read_journal(b)
    write_journal(b, {"cur": u.slot, "prev": j.get("cur", ""), "state": "trial", "boots": 0,
                      "seq": u.seq, "fw": u.fw, "pseq": j.get("seq", 0), "pfw": j.get("fw", ""),
                      "seen": j.get("seen", 0), "note": ""})
