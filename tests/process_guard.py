"""Markers that mean what they say: outside `services`, a test starts no process.

A test that starts any process (mosquitto, influxd, the collector, node for the
MicroPython VM, mpy-cross, mypy, pip, …) is marked `services`, so that
`-m "not services"` is the quick in-process suite. This plugin (loaded by
tests/conftest.py) enforces it: in the setup and call of a test not marked
`services`, every way to start a process raises ProcessOutsideServices, and the
test fails with a message naming the test and the command even if the code
under test swallows the exception. `mpy` (the VM runs in node) implies `services`.
"""

from __future__ import annotations

import _posixsubprocess
import contextlib
import os
import subprocess
from collections.abc import Callable, Generator, Iterator

import pytest

_SPAWNERS = ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "popen", "execv", "execve", "execvp", "execvpe",
             "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle",
             "spawnlp", "spawnlpe")


class ProcessOutsideServices(RuntimeError):
    """A test not marked `services` tried to start a process."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # before -m selects, so `-m "not services"` leaves the VM's tests out too
        if (item.get_closest_marker("mpy") or item.get_closest_marker("cluster")) and not item.get_closest_marker("services"):
            item.add_marker(pytest.mark.services)


@contextlib.contextmanager
def _no_processes(item: pytest.Item) -> Iterator[list[str]]:
    """Within the block, every way to start a process raises, and is recorded (in case the code swallows it)."""
    started: list[str] = []

    def refuse(what: str) -> Callable[..., object]:
        def refused(*args: object, **kwargs: object) -> object:
            msg = (f"{item.nodeid} started a process ({what}{_argv(args)}) but is not marked `services`: mark it "
                   "@pytest.mark.services, or test the logic in-process")
            started.append(msg)
            raise ProcessOutsideServices(msg)
        return refused

    saved: list[tuple[object, str, object]] = [(subprocess.Popen, "_execute_child", subprocess.Popen._execute_child),  # type: ignore[attr-defined]
                                               (_posixsubprocess, "fork_exec", _posixsubprocess.fork_exec)]
    saved += [(os, name, getattr(os, name)) for name in _SPAWNERS if hasattr(os, name)]
    for owner, name, _ in saved:
        setattr(owner, name, refuse("subprocess" if owner is subprocess.Popen else f"{getattr(owner, '__name__', owner)}.{name}"))
    try:
        yield started
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _argv(args: tuple[object, ...]) -> str:
    for a in args:
        if isinstance(a, list | tuple) and a and isinstance(a[0], str | bytes | os.PathLike):
            return ": " + " ".join(os.fsdecode(x) for x in a[:4])  # type: ignore[arg-type]
    return ""


def _guarded(item: pytest.Item) -> Generator[None, object, object]:
    if item.get_closest_marker("services"):
        return (yield)
    with _no_processes(item) as started:
        result = yield
    if started:
        pytest.fail(started[0], pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))
