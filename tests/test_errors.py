"""One error root: every exception class kerbside defines is a KerbsideError, and the CLI reports them once.

No subprocess: the modules are imported and the Typer app runs in-process.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kerbside.cli import app
from kerbside.core import errors
from kerbside.core.errors import KerbsideError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"


def _modules() -> list[str]:
    """Every module of every kerbside.* package pyproject.toml installs (the areas live in other folders)."""
    packages = [p for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
                if p.startswith("kerbside")]
    names = set(packages)
    for pkg in packages:
        names |= {m.name for m in pkgutil.iter_modules(importlib.import_module(pkg).__path__, pkg + ".")}
    return sorted(n for n in names if not n.endswith("__main__"))  # __main__ runs the command


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for name in _modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                found.append(cls)
    return found


def test_every_exception_class_kerbside_defines_is_a_kerbside_error() -> None:
    classes = _exception_classes()
    names = {c.__name__ for c in classes}
    assert {"Rejected", "SpoolFull", "PortError", "RangeError", "RegistryError", "Reboot"} <= names  # the walk sees areas
    assert len(classes) >= 35
    assert [c.__qualname__ for c in classes if not issubclass(c, KerbsideError)] == []


def test_every_class_sits_under_one_documented_category() -> None:
    categories = [c for c in vars(errors).values() if inspect.isclass(c) and c.__bases__[0] is KerbsideError]
    for cls in _exception_classes():
        if cls is KerbsideError or cls in categories:
            continue
        under = [c for c in categories if issubclass(cls, c)]
        assert len(under) == 1, f"{cls.__qualname__} is under {under}"
        assert f"`{cls.__name__}`" in DOC.read_text(), f"docs/errors.md does not list {cls.__name__}"


def test_builtin_bases_callers_rely_on_are_kept() -> None:
    from kerbside.analysis.query import NoDataError
    from kerbside.collector.dlq import NoSuchEntry
    from kerbside.collector.influx import InfluxDown
    from kerbside.core.registry import RegistryError
    from kerbside.core.settings import ConfigError
    from kerbside.provisioning.pki import PkiError

    assert issubclass(ConfigError, ValueError) and issubclass(PkiError, ValueError)
    assert issubclass(NoDataError, LookupError) and issubclass(NoSuchEntry, LookupError)
    assert issubclass(errors.StorageError, OSError) and issubclass(InfluxDown, RuntimeError)
    assert issubclass(RegistryError, errors.ConfigError)


def test_the_doc_tree_is_the_code_tree() -> None:
    tree = re.search(r"```\n(KerbsideError .*?)```", DOC.read_text(), re.S).group(1)  # type: ignore[union-attr]
    documented = re.findall(r"(\w+Error|\w+Signal)\s+exit (\d)", tree)
    categories = {c.__name__: str(c.exit_code) for c in vars(errors).values()
                  if inspect.isclass(c) and (c is KerbsideError or c.__bases__[0] is KerbsideError)}
    assert dict(documented) == categories


@pytest.mark.parametrize(("args", "code", "message"), [
    (["dlq", "show", "nope"], 1, "error: 0 entries match 'nope'; see kerbside dlq list"),
    (["registry", "rotate", "NOT-HEX"], 1, "error: 'NOT-HEX' is not a device id"),
    (["report", "lez", "--zone", "z", "--before", "x", "--after", "2026-01-01", "--from", "2026-01-01", "--to", "2026-01-02"],
     2, "error: "),
])
def test_the_cli_prints_one_line_and_the_category_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            args: list[str], code: int, message: str) -> None:
    monkeypatch.setenv("KERBSIDE_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("KERBSIDE_REGISTRY_PATH", str(tmp_path / "registry.json"))
    monkeypatch.setenv("KERBSIDE_INFLUX_URL", "http://127.0.0.1:9")  # nothing listens: never reached or refused
    r = CliRunner().invoke(app, args)
    assert r.exit_code == code, r.output
    assert r.output.startswith(message) and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
