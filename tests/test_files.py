"""kerbside.core.files.atomic_write: complete or unchanged, durable, and an existing file keeps owner, group and mode."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kerbside.core.errors import StorageError
from kerbside.core.files import atomic_write


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_a_new_file_has_its_mode_before_it_has_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modes = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:  # the content is complete here, the rename not done yet
        if stat.S_ISREG(os.fstat(fd).st_mode):
            modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    secret = atomic_write(tmp_path / "sub" / "secret", "s3cret")
    public = atomic_write(tmp_path / "acl", b"pattern read x\n", 0o644)
    assert (_mode(secret), _mode(public)) == (0o600, 0o644)
    assert modes == [0o600, 0o644]
    assert (secret.read_text(), public.read_bytes()) == ("s3cret", b"pattern read x\n")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["acl", "secret", "sub"]  # no temporary left


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    p = tmp_path / "passwd"
    p.write_text("old\n")
    p.chmod(0o640)
    atomic_write(p, "new\n")  # asks 0600 for a new file; this one stays as the operator set it
    assert (_mode(p), p.read_text()) == (0o640, "new\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand a file to another user")
def test_an_existing_file_keeps_its_owner_and_group_when_root_rewrites_it(tmp_path: Path) -> None:
    """mosquitto must still read its passwd after broker-config re-renders it as root."""
    p = tmp_path / "passwd"
    p.write_text("old\n")
    os.chown(p, 4321, 8765)
    p.chmod(0o600)
    atomic_write(p, "new\n")
    st = p.stat()
    assert (st.st_uid, st.st_gid, _mode(p), p.read_text()) == (4321, 8765, 0o600, "new\n")


def test_a_failed_replace_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "registry.json"
    p.write_text("old")

    def full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageError, match=r"cannot write .*registry.json: No space left on device") as e:
        atomic_write(p, "new")
    assert e.value.errno == 28, "the cause's errno is kept: the collector's advice depends on it (free space)"
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["registry.json"]


def test_the_file_then_the_rename_in_its_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write(tmp_path / "cursor.json", "{}")
    assert events == ["fsync file", "replace", "fsync dir"]
