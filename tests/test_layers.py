"""Arrows point down: core ← areas ← CLI/demo (issue 10 §3). Fails when an import points up or sideways.

Read from the source with ast (function-level imports included), so no module is imported and no process
is started.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AREAS = ("collector", "provisioning", "analysis", "simulator")
ROOF = {"kerbside/cli.py", "kerbside/__main__.py", "kerbside/demo.py", "kerbside/devstack.py", "kerbside/devcluster.py"}

# What each layer may import of ours (besides itself).
ALLOWED = {
    "knode": set(),
    "core": {"knode"},
    **{a: {"core", "knode"} if a == "simulator" else {"core"} for a in AREAS},
    "roof": {"core", "knode", "roof", *AREAS},
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(ROOT).as_posix()
    if rel.startswith("firmware/"):
        return "knode"
    if rel.startswith("kerbside/core/"):
        return "core"
    if rel in ROOF or rel == "kerbside/__init__.py":
        return "roof"
    head = rel.split("/", 1)[0]
    assert head in AREAS, f"{rel}: a new top-level module? give it a layer in tests/test_layers.py"
    return head


def target(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "knode":
        return "knode"
    if parts[0] in AREAS:
        return "top-level " + parts[0]  # never valid: everything installs under kerbside.*
    if parts[0] != "kerbside":
        return None
    if len(parts) == 1:
        return "roof"
    if parts[1] == "core":
        return "core"
    if parts[1] in AREAS:
        return parts[1]
    return "roof"


def sources() -> list[Path]:
    dirs = [ROOT / "kerbside", ROOT / "firmware", *(ROOT / a for a in AREAS)]
    return sorted(p for d in dirs for p in d.rglob("*.py") if "__pycache__" not in p.parts)


def imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_every_import_points_down() -> None:
    wrong = []
    for path in sources():
        layer = layer_of(path)
        for line, module in imports(path):
            t = target(module)
            if t is not None and t != layer and t not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {layer} imports {module} ({t})")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_the_cli_reaches_every_area_and_nothing_imports_the_cli() -> None:
    from kerbside import cli

    assert {m.split(".")[1] for m in cli._COMMAND_MODULES if m.count(".") == 2} == set(AREAS)
    for path in sources():
        if layer_of(path) != "roof":
            assert all(not m.startswith(("kerbside.cli", "kerbside.demo", "kerbside.devstack"))
                       for _, m in imports(path)), path


@pytest.mark.parametrize(("layer", "module", "ok"), [
    ("core", "kerbside.collector.service", False), ("core", "kerbside.cli", False), ("core", "knode.wire", True),
    ("collector", "kerbside.analysis.query", False), ("collector", "kerbside.devstack", False),
    ("collector", "collector.decode", False), ("collector", "kerbside.core.influx", True),
    ("simulator", "knode.node", True), ("roof", "kerbside.simulator.fleet", True), ("knode", "kerbside.core", False),
])
def test_the_checker_tells_up_from_down(layer: str, module: str, ok: bool) -> None:
    t = target(module)
    assert (t == layer or t in ALLOWED[layer]) is ok
