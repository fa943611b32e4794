"""The package's shape: one `graft` import package in the wheel, import contracts kept, no generic names."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

ROOMS = ("api", "worker", "shared", "cli", "client")
GENERIC_IMPORT = re.compile(rf"^\s*(from|import)\s+({'|'.join(ROOMS)})(\.|\s|$)", re.MULTILINE)


def test_import_contracts_are_kept() -> None:
    """import-linter (pyproject.toml's contracts): layering, a torch-free API, a pure core, no cycles."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "6 kept" in done.stdout


@pytest.mark.parametrize("folder", [*ROOMS, "tests", "bench"])
def test_code_imports_graft_names_only(folder: str) -> None:
    """`import shared` would work from a checkout and break once installed: every import says graft.*."""
    offenders = [f"{path.relative_to(ROOT)}: {match.group(0).strip()}"
                 for path in sorted((ROOT / folder).rglob("*.py"))
                 for match in GENERIC_IMPORT.finditer(path.read_text())]
    assert offenders == []


def test_the_wheel_holds_only_graft(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources: its only top-level import name is graft."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for room in ROOMS:
        shutil.copytree(ROOT / room, source / room, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "--wheel-dir", str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("graft-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"graft", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                                                + ".dist-info"}
    for room in (*ROOMS, "worker/core"):
        assert f"graft/{room}/__init__.py" in names
    assert "graft/api/predict_now.py" in names and "graft/worker/core/train.py" in names
    assert "graft/client/transport.py" in names
    migrations = ROOT / "shared" / "migrations"  # `graft db upgrade` runs them from the installed package
    shipped = {f"graft/shared/{p.relative_to(ROOT / 'shared').as_posix()}" for p in migrations.rglob("*")
               if p.suffix in (".py", ".mako") and "__pycache__" not in p.parts}
    assert {"graft/shared/migrations/env.py", "graft/shared/migrations/script.py.mako",
            "graft/shared/migrations/versions/0001_baseline.py"} <= shipped
    assert shipped <= set(names)
    dashboard = {f"graft/api/{p.relative_to(ROOT / 'api').as_posix()}" for p in (ROOT / "api" / "static").rglob("*")
                 if p.is_file()}  # the web page at / and its vendored libraries, with their licences
    assert "graft/api/static/index.html" in dashboard and dashboard <= set(names), dashboard - set(names)
    top_level = next(n for n in names if n.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["graft"]
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "graft = graft.cli.main:main" in entry_points
