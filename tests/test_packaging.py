"""What `pip install kerbside` puts into site-packages: kerbside and knode, nothing else (issue 10 §2).

Names such as `collector`, `analysis` or `simulator` exist on PyPI; a top-level module of ours with one of
those names would collide with anything else installed beside kerbside.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src")  # setuptools writes build/ into the tree it builds: not into ours
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("kerbside", "collector", "provisioning", "analysis", "simulator", "firmware"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.mpy"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    (whl,) = out.glob("kerbside-*.whl")
    return zipfile.ZipFile(whl)


@pytest.mark.services
def test_only_kerbside_and_knode_are_installed(wheel: zipfile.ZipFile) -> None:
    tops = {n.split("/", 1)[0] for n in wheel.namelist() if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"kerbside", "knode"}
    top_level = next(n for n in wheel.namelist() if n.endswith(".dist-info/top_level.txt"))
    assert set(wheel.read(top_level).decode().split()) == {"kerbside", "knode"}


@pytest.mark.services
def test_every_area_and_its_data_is_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for module in ("kerbside/cli.py", "kerbside/core/settings.py", "kerbside/collector/service.py",
                   "kerbside/provisioning/provision.py", "kerbside/analysis/report.py", "kerbside/simulator/fleet.py",
                   "knode/node.py", "knode/drivers/pms.py"):
        assert module in names, module
    for data in ("kerbside/analysis/limits.json", "kerbside/analysis/templates/report.html",
                 "kerbside/analysis/schemas/AirQualityObserved.schema.json", "kerbside/collector/deploy/collector.toml",
                 "kerbside/collector/deploy/kerbside-alerts.yml", "kerbside/collector/web/fleet.html",
                 "kerbside/collector/web/fleet.js", "kerbside/collector/web/fleet.css"):
        assert data in names, data
