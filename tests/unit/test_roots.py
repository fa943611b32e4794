"""Never outside the roots: training and inspection skip (and report) files and folders whose real path leaves the
allowed roots through a symlink, and still read symlinks that stay inside."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from graft.cli.sampledata import make_shapes_dataset
from graft.worker.core.dataset import OUTSIDE_ROOTS, find_files, load_dataset
from graft.worker.core.inspection import inspect_dataset


@pytest.fixture()
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A root with a dataset holding links out (a file, a subfolder, a whole class folder) and one link within."""
    root, secret = tmp_path / "root", tmp_path / "secret"
    data = make_shapes_dataset(root / "shapes", per_class=4, size=32, classes=("circles", "squares"))
    make_shapes_dataset(secret, per_class=2, size=32, classes=("loot",), seed=9)
    loot = sorted((secret / "loot").glob("*.jpg"))
    (data / "circles" / "stolen.jpg").symlink_to(loot[0])  # a file out
    (data / "squares" / "more").symlink_to(secret / "loot")  # a subfolder out
    (data / "triangles").symlink_to(secret / "loot")  # a whole class folder out
    inside = sorted((data / "squares").glob("*.jpg"))[0]
    (data / "circles" / "alias.jpg").symlink_to(inside)  # within the root: fine
    return root, data


OUT = ["circles/stolen.jpg", "squares/more/", "triangles/"]


def test_find_files_leaves_out_and_reports_what_leads_outside(layout: tuple[Path, Path]) -> None:
    root, data = layout
    outside: list[str] = []
    classes, files, val = find_files(data, [root], outside)
    assert classes == ["circles", "squares"] and val is None
    assert sorted(outside) == OUT
    assert "alias.jpg" in {p.name for p in files["circles"]} and "stolen.jpg" not in {p.name for p in files["circles"]}
    assert find_files(data)[0] == ["circles", "squares", "triangles"]  # without roots (unit use): everything


def test_training_skips_and_lists_them(layout: tuple[Path, Path]) -> None:
    root, data = layout
    loaded = load_dataset(data, 0.25, 0, 32, roots=[root])
    assert loaded.classes == ["circles", "squares"]
    outside = sorted(s["path"] for s in loaded.skipped if s["reason"] == OUTSIDE_ROOTS)
    assert outside == OUT
    assert not any("loot" in p for p in loaded.train.paths + loaded.val.paths)


def test_inspection_reports_them(layout: tuple[Path, Path]) -> None:
    root, data = layout
    report = inspect_dataset(data, 50_000_000, roots=[root])
    issue = next(i for i in report["issues"] if i["code"] == "outside_roots")
    assert issue["level"] == "warning" and sorted(issue["files"]) == OUT
    assert set(report["classes"]) == {"circles", "squares"} and report["num_images"] == 9  # 4 + alias, 4


def test_a_dangling_link_is_never_read(layout: tuple[Path, Path], tmp_path: Path) -> None:
    root, data = layout
    shutil.rmtree(tmp_path / "secret")  # the links out now point nowhere
    classes, files, _ = find_files(data, [root], [])
    assert classes == ["circles", "squares"] and "stolen.jpg" not in {p.name for p in files["circles"]}
