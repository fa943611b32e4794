"""Safe archive extraction (graft.shared.archive) and safe file names, driven directly: no app, no services."""
from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

import pytest

from graft.shared.archive import ArchiveError, ArchiveLimits, Extracted, extract_archive
from graft.shared.files import UploadError, is_junk_path, safe_relative
from tests.archives import CASES, JUNK, MB

LIMITS = ArchiveLimits(max_members=50, max_bytes=4 * MB, max_ratio=100)  # the service tier's small_app limits
REFUSED = [case for case in CASES if case[2] == 400]  # refused by the archive rules themselves
ACCEPTED = [case for case in CASES if case[2] == 202]  # extracted, then reported on by the inspection
# The 413 row is the API's body limit (an HTTP concern): it is tested in tests/service/test_datasets.py only.

# Every member is checked before one byte is written, except for what only writing can find: a name that is
# already on disk (the same member twice, or a file that is also a folder). Those refusals may leave the
# members written before them in target, which the caller removes (see extract_archive's docstring).
FOUND_WHILE_WRITING = {"duplicate"}


def _write(tmp_path: Path, build: Callable[[], tuple[bytes, str]]) -> Path:
    """Write the built archive to tmp_path under its file name."""
    body, filename = build()
    archive = tmp_path / filename
    archive.write_bytes(body)
    return archive


def _extract(archive: Path) -> Extracted:
    """Extract archive into the folder tree beside it, with the limits and junk rule the API uses."""
    return extract_archive(archive, archive.parent / "tree", LIMITS, skip=lambda n: is_junk_path(n.parts))


def _member_names(archive: Path) -> set[str]:
    """The names of an archive's members, as stored."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return set(zf.namelist())
    with tarfile.open(archive) as tf:
        return set(tf.getnames())


@pytest.mark.parametrize(("build", "code"), [(c[1], c[3]) for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_hostile_archives_are_refused(tmp_path: Path, build: Callable[[], tuple[bytes, str]], code: str) -> None:
    """Each refused row raises ArchiveError with its code and writes nothing outside the target folder."""
    archive, tree = _write(tmp_path, build), tmp_path / "tree"
    with pytest.raises(ArchiveError) as refused:
        _extract(archive)
    assert refused.value.code == code, str(refused.value)
    assert {p.name for p in tmp_path.iterdir()} <= {archive.name, "tree"}  # nothing escaped the target
    written = sorted(tree.rglob("*")) if tree.exists() else []
    if code not in FOUND_WHILE_WRITING:
        assert written == []  # refused while checking: not one byte written
    else:  # refused while writing: only plain members written before the refusal, all inside the target
        assert all(not p.is_symlink() and (p.is_file() or p.is_dir()) for p in written)
        files = {p.relative_to(tree).as_posix() for p in written if p.is_file()}
        assert files <= _member_names(archive)


@pytest.mark.parametrize(("build", "code", "named"), [(c[1], c[3], c[4]) for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_awkward_archives_extract_without_junk(tmp_path: Path, build: Callable[[], tuple[bytes, str]],
                                               code: str | None, named: str | None) -> None:
    """Each accepted row extracts; junk is skipped, never written; the file the report will name is there."""
    extracted = _extract(_write(tmp_path, build))
    tree = tmp_path / "tree"
    written = list(tree.rglob("*"))
    assert not {p.name for p in written} & JUNK
    assert extracted.files == sum(1 for p in written if p.is_file()) > 0
    if named:
        assert (tree / named).is_file()
    assert extracted.non_utf8 == ([named] if code == "non_utf8_name" else [])


BAD_NAMES = [("", "empty"), ("a\x00b", "nul-byte"), ("..", "dotdot"), ("a/../b", "dotdot-inside"), ("/", "root-only"),
             ("x" * 256, "part-over-255-bytes")]
GOOD_NAMES = [("a\\b.jpg", "a/b.jpg", "backslash"), ("./a//b", "a/b", "dot-and-double-slash")]


@pytest.mark.parametrize("name", [n for n, _ in BAD_NAMES], ids=[i for _, i in BAD_NAMES])
def test_safe_relative_refuses_bad_names(name: str) -> None:
    """Empty, NUL, '..' anywhere, nothing usable, or a part over 255 bytes: UploadError."""
    with pytest.raises(UploadError):
        safe_relative(name)


@pytest.mark.parametrize(("name", "expected"), [g[:2] for g in GOOD_NAMES], ids=[g[2] for g in GOOD_NAMES])
def test_safe_relative_normalises_good_names(name: str, expected: str) -> None:
    """Backslashes become slashes; '.' and empty parts are dropped."""
    assert safe_relative(name) == PurePosixPath(expected)
    assert str(safe_relative(name)) == expected
