"""Power cut at every write of an update's life: the node always boots one complete firmware, never a mix.

The lifecycle (tests/firmware/ota_model.py): release 1 installs and becomes
healthy, release 2 fails its trial and is rolled back, release 3 installs and
becomes healthy (freeing release 1's slot). Every create, write, close,
rename, remove, mkdir and rmdir that knode.ota and main.py make on the way is a
cut position. After each cut the node reboots (main.py's choose), must select
complete firmware (every file of one release, or the provisioned firmware),
settles, never keeps the bad release, never loses a release that was healthy
before the cut, and then the sender's retries bring it to the uncut run's end
state. Runs under CPython and in the MicroPython VM, with identical results.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from unittest.mock import patch

import pytest

from kerbside.core.release import new_key, point
from knode import ota, ota_receive, p256

from . import ota_model
from .ota_helpers import MAIN, as_model, release, tiny_files

BASE = [(p.removeprefix("/lib/knode/"), d) for p, d in tiny_files("base", 500)]


@pytest.fixture(scope="module")
def signed() -> tuple[bytes, list[dict]]:
    """The node's key bytes, and the three releases signed with it."""
    key = new_key()
    return point(key), [as_model(release(key, seq, fw, tiny_files(fw))) for seq, fw in ((1, "r1"), (2, "r2-bad"), (3, "r3"))]


def _boot_namespace() -> dict:
    ns: dict = {"__name__": "kmain"}
    exec(compile(MAIN.read_text(), str(MAIN), "exec"), ns)
    return ns


@contextmanager
def _model_fs() -> Iterator[None]:
    """ota_model.use() points knode.ota and knode.ota_receive at the model's file system: put the real one back."""
    saved = {(m, k): m.__dict__[k] for m in (ota, ota_receive) for k in ("os", "open", "UNLOAD") if k in m.__dict__}
    try:
        yield
    finally:
        for m in (ota, ota_receive):
            for k in ("os", "open", "UNLOAD"):
                if (m, k) in saved:
                    setattr(m, k, saved[(m, k)])
                else:
                    m.__dict__.pop(k, None)


def _cpython_run(signed: tuple[bytes, list[dict]]) -> dict:
    """The model in CPython, with the signature check memoised: it verifies the same three manifests some 400
    times, which is the VM run's job (there every check is made); here it would only cost seconds."""
    with _model_fs(), patch.object(p256, "verify", functools.lru_cache(maxsize=None)(p256.verify)):
        return ota_model.run(ota, _boot_namespace(), BASE, signed[0], signed[1], "r2-bad")


def _check(result: dict) -> None:
    assert result["events"] == ["installed r1", "healthy r1", "boot r1", "installed r2-bad", "rolled back r2-bad",
                                "boot r1", "installed r3", "healthy r3", "boot r3"]
    assert result["final"] == "r3"
    j = result["journal"]
    assert (j["cur"], j["state"], j["seq"], j["seen"], j["fw"]) == ("b", "ok", 3, 3, "r3")
    # every position was tried and every one recovered (run() raises on the first that does not)
    assert sum(result["outcomes"].values()) == result["positions"]
    # what the first boot after a cut selects: only complete firmware, and each kind of outcome happens
    firsts = {k.split(" -> ")[0] for k in result["outcomes"]}
    assert firsts == {"base", "r1", "r2-bad", "r3"}


def test_power_cut_at_every_write_of_the_update_lifecycle_cpython(signed: tuple[bytes, list[dict]]) -> None:
    result = _cpython_run(signed)
    _check(result)
    assert result["positions"] >= 100
    print(f"power-cut positions: {result['positions']}; first boot -> settled: {result['outcomes']}")


@pytest.mark.mpy
@pytest.mark.services
def test_power_cut_at_every_write_of_the_update_lifecycle_in_the_vm(micropython, signed: tuple[bytes, list[dict]]) -> None:
    model = ota_model.__file__
    script = "\n".join([
        open(model).read(),
        f"PUB = {signed[0]!r}",
        f"RELEASES = {signed[1]!r}",
        f"BASE = {BASE!r}",
        f"MAIN = {MAIN.read_text()!r}",
        "import json",
        "from knode import ota",
        "boot = {'__name__': 'kmain'}",
        "exec(MAIN, boot)",
        "print('KS_POWERCUT ' + json.dumps(run(ota, boot, BASE, PUB, RELEASES, 'r2-bad')))",
    ])
    out = micropython.run(script, heap=1024 * 1024).check()
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("KS_POWERCUT ")]
    assert len(line) == 1, out.stdout
    vm = json.loads(line[0][len("KS_POWERCUT "):])
    _check(vm)
    assert vm == json.loads(json.dumps(_cpython_run(signed)))
