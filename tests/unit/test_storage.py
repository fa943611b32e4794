"""Server-side path confinement and atomic writes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from graft.shared.storage import PathNotAllowed, atomic_write_json, job_dir, model_dir, resolve_under_roots


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, Path]:
    """data/root (the configured root) with a file and links, data/root2 next to it, and an outside folder."""
    root, root2, outside = tmp_path / "data" / "root", tmp_path / "data" / "root2", tmp_path / "outside"
    for folder in (root / "sub" / "deep", root2, outside):
        folder.mkdir(parents=True)
    (root / "file.txt").write_text("x")
    (root / "link_in").symlink_to(root / "sub")
    (root / "link_out").symlink_to(outside)
    (root / "sub" / "link_up").symlink_to(tmp_path / "data")
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    return {"root": root, "root2": root2, "outside": outside}


OK, OUTSIDE, ABSOLUTE, MISSING, EMPTY = "ok", "outside the configured data roots", "must be absolute", "no such", "NUL"

CASES = [
    ("inside", "{root}/sub", OK, "sub"),
    ("deeper", "{root}/sub/deep/", OK, "sub/deep"),
    ("root itself", "{root}", OK, ""),
    ("dot segments inside", "{root}/sub/./deep/..", OK, "sub"),
    ("symlink inside", "{root}/link_in", OK, "sub"),
    ("outside", "{outside}", OUTSIDE, None),
    ("parent of root", "{root}/..", OUTSIDE, None),
    ("dotdot escape", "{root}/../../outside", OUTSIDE, None),
    ("dotdot to sibling", "{root}/sub/../../root2", OUTSIDE, None),
    ("prefix trick", "{root2}", OUTSIDE, None),
    ("symlink out", "{root}/link_out", OUTSIDE, None),
    ("symlink up and out", "{root}/sub/link_up/root2", OUTSIDE, None),
    ("filesystem root", "/", OUTSIDE, None),
    ("relative", "data/root/sub", ABSOLUTE, None),
    ("dot relative", "./sub", ABSOLUTE, None),
    ("nonexistent", "{root}/missing", MISSING, None),
    ("dangling symlink", "{root}/dangling", OUTSIDE, None),
    ("a file", "{root}/file.txt", MISSING, None),
    ("NUL byte", "{root}/sub\x00/etc", EMPTY, None),
    ("empty", "", "empty", None),
]


@pytest.mark.parametrize(("raw", "outcome", "relative"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_resolve_under_roots(tree: dict[str, Path], raw: str, outcome: str, relative: str | None) -> None:
    path = raw.format(**{k: str(v) for k, v in tree.items()})
    if outcome == OK:
        resolved = resolve_under_roots(path, [tree["root"]])
        assert resolved == (tree["root"] / relative).resolve() and resolved.is_absolute()
    else:
        with pytest.raises(PathNotAllowed, match=outcome):
            resolve_under_roots(path, [tree["root"]])


def test_no_roots_configured_refuses_everything(tree: dict[str, Path]) -> None:
    with pytest.raises(PathNotAllowed, match="GRAFT_DATA_ROOTS"):
        resolve_under_roots(tree["root"], [])


def test_several_roots_and_pathlike(tree: dict[str, Path]) -> None:
    roots = [tree["root"], tree["root2"]]
    assert resolve_under_roots(tree["root2"], roots) == tree["root2"].resolve()
    assert resolve_under_roots(tree["root"] / "sub", iter(roots)) == (tree["root"] / "sub").resolve()


def test_root_given_through_a_symlink(tree: dict[str, Path], tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(tree["root"])
    assert resolve_under_roots(tree["root"] / "sub", [alias]) == (tree["root"] / "sub").resolve()
    assert resolve_under_roots(alias / "sub", [tree["root"]]) == (tree["root"] / "sub").resolve()
    with pytest.raises(PathNotAllowed):
        resolve_under_roots(tree["outside"], [alias])


def _all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_atomic_write_json_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "meta.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    atomic_write_json(target, {"b": 2})  # overwrite in place
    assert json.loads(target.read_text()) == {"b": 2}
    assert _all_files(tmp_path) == ["nested", "nested/meta.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_mode_open_would_give(tmp_path: Path, umask: int) -> None:
    before = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(before)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_json_failure_keeps_old_file_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "meta.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})
    blocked = tmp_path / "blocked.json"
    blocked.mkdir()
    (blocked / "keep").write_text("x")
    with pytest.raises(OSError):
        atomic_write_json(blocked, {"v": 2})  # os.replace onto a non-empty folder fails after the temp file exists
    assert json.loads(target.read_text()) == {"v": 1}
    assert _all_files(tmp_path) == ["blocked.json", "blocked.json/keep", "meta.json"]


def test_artifact_layout(tmp_path: Path) -> None:
    assert job_dir(tmp_path, "j1") == tmp_path / "jobs" / "j1"
    assert model_dir(str(tmp_path), "m1") == tmp_path / "models" / "m1"  # type: ignore[arg-type]
    assert not os.listdir(tmp_path)  # pure path arithmetic, nothing created
