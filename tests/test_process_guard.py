"""The process guard: outside `services`, starting a process fails the test and says which test and which command.

Each case runs a small test file in an inner pytest session in this process (pytester), with the guard loaded.
"""

from __future__ import annotations

import pytest

INI = '[pytest]\nmarkers =\n    services: real processes\n    mpy: the MicroPython VM\n'
ARGS = ("-p", "process_guard", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")  # hypothesis: 1 s a session


def _run(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    pytester.makeini(INI)
    pytester.makepyfile(test_inner="import asyncio, os, subprocess\nimport pytest\n\n" + body)
    return pytester.runpytest_inprocess(*ARGS)


@pytest.mark.parametrize("start", [
    "subprocess.run(['true'])",
    "asyncio.run(asyncio.create_subprocess_exec('true'))",
    "os.system('true')",
    "os.fork()",
    "os.posix_spawn('/bin/true', ['true'], {})",
])
def test_a_process_outside_services_fails_the_test_with_its_name(pytester: pytest.Pytester, start: str) -> None:
    r = _run(pytester, f"def test_starts_one():\n    {start}\n")
    r.assert_outcomes(failed=1)
    assert "test_inner.py::test_starts_one started a process" in r.stdout.str()
    assert "is not marked `services`" in r.stdout.str()


def test_a_swallowed_refusal_still_fails(pytester: pytest.Pytester) -> None:
    r = _run(pytester, "def test_hides_it():\n    try:\n        subprocess.run(['true'])\n    except Exception:\n        pass\n")
    r.assert_outcomes(failed=1)
    assert "started a process (subprocess: true)" in r.stdout.str()


def test_a_fixture_that_starts_a_process_counts_too(pytester: pytest.Pytester) -> None:
    r = _run(pytester, "@pytest.fixture\ndef daemon():\n    return subprocess.Popen(['true'])\n\n"
                       "def test_uses_it(daemon):\n    pass\n")
    r.assert_outcomes(errors=1)
    assert "test_uses_it started a process" in r.stdout.str()


def test_mpy_implies_services(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_inner="import pytest\n\n@pytest.mark.mpy\ndef test_vm():\n    pass\n\ndef test_unit():\n    pass\n")
    r = pytester.runpytest_inprocess(*ARGS, "-m", "not services")
    r.assert_outcomes(passed=1, deselected=1)


@pytest.mark.services
def test_services_tests_may_start_processes(pytester: pytest.Pytester) -> None:
    r = _run(pytester, "@pytest.mark.services\ndef test_starts_one():\n    assert subprocess.run(['true']).returncode == 0\n")
    r.assert_outcomes(passed=1)
