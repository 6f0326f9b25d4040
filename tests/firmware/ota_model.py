# A flash file system that loses power, and a scripted update lifecycle to cut at every write.
#
# Runs unchanged under CPython and the MicroPython VM (no typing, no pathlib,
# nothing MicroPython lacks). knode.ota and main.py get
# this file system instead of the real one by replacing their `os` and `open`
# globals; everything else they do is their own code.
#
# What survives a power cut is what LittleFS (MicroPython's ESP32 file system)
# promises: creating a file commits its (empty) directory entry at open; its
# content is committed by close (sync), all at once, never in part; rename,
# remove, mkdir and rmdir are atomic. Every mutating call is a cut position:
# with cut_at = k, the k-th one raises PowerCut before it takes effect, and
# every file still open loses what was written since it was opened.


class PowerCut(Exception):
    pass


class _Writer:
    def __init__(self, fs, path):
        self.fs = fs
        self.path = path
        self.buf = bytearray()
        self.closed = False

    def write(self, data):
        self.fs.op("write " + self.path)
        if isinstance(data, str):
            data = data.encode()
        self.buf.extend(data)
        return len(data)

    def flush(self):
        pass

    def close(self):
        if self.closed:
            return
        self.fs.op("close " + self.path)
        self.closed = True
        self.fs.files[self.path] = bytes(self.buf)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self.closed = True  # a power cut while writing: nothing more reaches flash
        return False


class _Reader:
    def __init__(self, data, text):
        self.data = data
        self.pos = 0
        self.text = text

    def read(self, n=-1):
        end = len(self.data) if n is None or n < 0 else min(len(self.data), self.pos + n)
        out = self.data[self.pos:end]
        self.pos = end
        return out.decode() if self.text else out

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FS:
    """Use as `os` and `open` of the code under test (paths are absolute, root "")."""

    def __init__(self):
        self.files = {}
        self.dirs = set([""])
        self.ops = 0
        self.cut_at = -1
        self.log = []

    def op(self, what):
        if self.ops == self.cut_at:
            self.ops += 1
            raise PowerCut(what)
        self.ops += 1
        self.log.append(what)

    def _parent(self, p):
        return p[:p.rfind("/")]

    def stat(self, p):
        p = p.rstrip("/")
        if p in self.dirs:
            return (0x4000, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        if p in self.files:
            return (0x8000, 0, 0, 0, 0, 0, len(self.files[p]), 0, 0, 0)
        raise OSError(2)

    def listdir(self, p):
        p = p.rstrip("/")
        if p not in self.dirs:
            raise OSError(2)
        out = []
        for q in list(self.files) + list(self.dirs):
            if q and self._parent(q) == p:
                out.append(q[len(p) + 1:])
        return sorted(out)

    def mkdir(self, p):
        if p in self.dirs or p in self.files:
            raise OSError(17)
        if self._parent(p) not in self.dirs:
            raise OSError(2)
        self.op("mkdir " + p)
        self.dirs.add(p)

    def rmdir(self, p):
        if p not in self.dirs:
            raise OSError(2)
        if self.listdir(p):
            raise OSError(39)
        self.op("rmdir " + p)
        self.dirs.discard(p)

    def remove(self, p):
        if p not in self.files:
            raise OSError(2)
        self.op("remove " + p)
        del self.files[p]

    def rename(self, a, b):
        if a not in self.files or b in self.dirs or self._parent(b) not in self.dirs:
            raise OSError(2)
        self.op("rename " + a + " " + b)
        self.files[b] = self.files.pop(a)

    def statvfs(self, p):
        return (4096, 4096, 512, 400, 400, 0, 0, 0, 0, 255)

    def open(self, p, mode="r"):
        if "w" in mode:
            if self._parent(p) not in self.dirs or p in self.dirs:
                raise OSError(2)
            if p not in self.files:
                self.op("create " + p)
                self.files[p] = b""
            return _Writer(self, p)
        if p not in self.files:
            raise OSError(2)
        return _Reader(self.files[p], "b" not in mode)

    def put(self, p, data):
        """Set up flash before the scripted part (not a cut position)."""
        parts = p.split("/")
        for i in range(2, len(parts)):
            self.dirs.add("/".join(parts[:i]))
        self.files[p] = data


class Board:
    def path(self, p):
        return p


class Node:
    """What knode.ota needs of a node."""

    def __init__(self):
        self.board = Board()
        self.reboot_requested = False


def use(fs, ota, boot):
    """Point knode.ota, knode.ota_receive and main.py (its namespace `boot`) at fs. The receiving module stays
    loaded (ota.UNLOAD off) so that it keeps this file system between commands."""
    from knode import ota_receive
    ota.UNLOAD = False
    for m in (ota, ota_receive):
        m.os = fs
        m.open = fs.open
    boot["os"] = fs
    boot["open"] = fs.open


def check_slot(fs, where, files):
    """files: [(rel path, bytes)]: the package in `where` holds exactly these."""
    want = {}
    for rel, data in files:
        want[where + "/knode/" + rel] = data
    have = {}
    for p in fs.files:
        if p.startswith(where + "/knode/"):
            have[p] = fs.files[p]
    return have == want


def lifecycle(fs, ota, boot, releases, bad_fw, record):
    """Install each release and boot it; the release whose fw is bad_fw fails on trial and is rolled back.
    record(event) after each step, to learn which firmware should run at every point."""
    board = Board()
    for r in releases:
        node = Node()
        for args in r["commands"]:
            err = ota.command(node, args)
            if err is not None:
                raise AssertionError("refused: " + err)
        record("installed " + r["fw"])
        settle(fs, ota, boot, bad_fw, record)
    return board


def settle(fs, ota, boot, bad_fw, record):
    """Boot until the firmware is out of trial, as main.py and the node would."""
    board = Board()
    for _ in range(8):
        j = boot["choose"]("")
        if j.get("state") != "trial":
            record("boot " + (j.get("fw") or "base"))
            return j
        if j.get("fw") == bad_fw:
            boot["rollback"]("", j, "self-test failed")
            record("rolled back " + j.get("fw"))
            continue  # main.py resets: boot again
        ota.healthy(board)
        record("healthy " + j.get("fw"))
    raise AssertionError("no settled firmware after 8 boots")


def run(ota, boot, base, pub, releases, bad_fw):
    """Cut at every position of the lifecycle; after each cut, reboot and check the node boots complete firmware,
    settles, and can still be updated to the same end state. Returns a summary."""
    by_fw = {"base": None}
    for r in releases:
        by_fw[r["fw"]] = r["files"]

    def fresh():
        fs = FS()
        for rel, data in base:
            fs.put("/lib/knode/" + rel, data)
        fs.put("/release.pub", pub)
        use(fs, ota, boot)
        return fs

    def complete(fs):
        """The firmware the journal selects, checked file by file: its name, or raise."""
        j = boot["read"]("") or {}
        cur = j.get("cur") or ""
        for rel, data in base:  # the provisioned firmware is never written by an update
            if fs.files.get("/lib/knode/" + rel) != data:
                raise AssertionError("base firmware changed")
        if not cur:
            return "base"
        name = j.get("fw")
        if name not in by_fw or not check_slot(fs, "/fw/" + cur, by_fw[name]):
            raise AssertionError("MIXED: journal selects " + cur + " as " + str(name))
        return name

    # the uncut run: its events and the number of cut positions
    fs = fresh()
    events = []
    lifecycle(fs, ota, boot, releases, bad_fw, events.append)
    final = complete(fs)
    total = fs.ops
    j_end = boot["read"]("")
    outcomes = {}
    for k in range(total):
        fs = fresh()
        fs.cut_at = k
        seen = []
        try:
            lifecycle(fs, ota, boot, releases, bad_fw, seen.append)
            raise AssertionError(f"no cut at {k}")
        except PowerCut:
            pass
        fs.cut_at = -1
        # the update in RAM is gone with the power: the node object is not reused
        first = complete(fs)  # the firmware the next boot selects, before anything else runs
        settle(fs, ota, boot, bad_fw, lambda e: None)
        after = complete(fs)
        if after == bad_fw:
            raise AssertionError(f"cut {k}: the bad release survived")
        healthy_before = [e for e in seen if e.startswith("healthy ")]
        if healthy_before and after == "base":
            raise AssertionError(f"cut {k}: a healthy release was lost")
        # the sender tries again from the start: every release that is newer than the node's still installs
        j = boot["read"]("") or {}
        for r in releases:
            if r["seq"] > j.get("seen", 0):
                node = Node()
                err = None
                for args in r["commands"]:
                    err = ota.command(node, args)
                    if err is not None:
                        break
                if err is not None:
                    raise AssertionError(f"cut {k}: retry of {r['fw']} refused: {err}")
                settle(fs, ota, boot, bad_fw, lambda e: None)
        end = complete(fs)
        j = boot["read"]("")
        if end != final or j.get("seen") != j_end.get("seen") or j.get("state") != "ok":
            raise AssertionError(f"cut {k}: ended at {end} {j}, not {final} {j_end}")
        key = first + " -> " + after
        outcomes[key] = outcomes.get(key, 0) + 1
    return {"positions": total, "events": events, "final": final, "outcomes": outcomes,
            "journal": j_end}
