"""Safe archive extraction (graft.shared.archive) and safe file names, driven directly: no app, no services."""
from __future__ import annotations

import bz2
import tarfile
import tracemalloc
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

import pytest

from graft.shared.archive import ArchiveError, ArchiveLimits, Extracted, Plan, extract_archive
from graft.shared.archive_read import open_tar_stream
from graft.shared.files import UploadError, display_name, is_junk_path, original_name, safe_relative
from tests import archives
from tests.archives import CASES, JUNK, MB, STRUCTURE_CASES

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
             ("x" * 256, "part-over-255-bytes"), ("d/" * 32 + "x", "33-levels"), ("d/" * 2100 + "x", "2100-levels"),
             ("/".join(["n" * 200] * 6), "over-1024-bytes")]
GOOD_NAMES = [("a\\b.jpg", "a/b.jpg", "backslash"), ("./a//b", "a/b", "dot-and-double-slash"),
              ("d/" * 31 + "x", "d/" * 31 + "x", "32-levels")]


@pytest.mark.parametrize("name", [n for n, _ in BAD_NAMES], ids=[i for _, i in BAD_NAMES])
def test_safe_relative_refuses_bad_names(name: str) -> None:
    """Empty, NUL, '..' anywhere, nothing usable, a part over 255 bytes, more than MAX_DEPTH levels or more than
    MAX_NAME_BYTES: UploadError, whose message stays short however long the name."""
    with pytest.raises(UploadError) as refused:
        safe_relative(name)
    assert len(str(refused.value)) < 200


@pytest.mark.parametrize(("name", "expected"), [g[:2] for g in GOOD_NAMES], ids=[g[2] for g in GOOD_NAMES])
def test_safe_relative_normalises_good_names(name: str, expected: str) -> None:
    """Backslashes become slashes; '.' and empty parts are dropped."""
    assert safe_relative(name) == PurePosixPath(expected)
    assert str(safe_relative(name)) == expected


@pytest.mark.parametrize(("build", "code"), [(c[1], c[2]) for c in STRUCTURE_CASES],
                         ids=[c[0] for c in STRUCTURE_CASES])
def test_archive_structure_is_read_in_bounded_memory(tmp_path: Path, build: Callable[[int], tuple[bytes, str]],
                                                     code: str) -> None:
    """Oversized headers, header chains, sparse maps and a lying zip directory are refused before they are
    loaded: the Python heap grows by a few MB at most (tarfile alone reads the 32 MB headers whole; zipfile
    builds 65,000 members)."""
    archive = _write(tmp_path, lambda: build(32))
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError) as refused:
            _extract(archive)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.code == code, str(refused.value)
    assert peak < 8 * MB, f"{peak / MB:.1f} MB allocated while refusing"
    assert not (tmp_path / "tree").exists() or not any((tmp_path / "tree").iterdir())


def test_a_compressed_stream_is_cut_off_past_the_ratio(tmp_path: Path) -> None:
    """The decompressed tar stream itself is bounded (max_ratio times the file), whatever its headers say."""
    bomb = tmp_path / "bomb.tar.bz2"
    bomb.write_bytes(bz2.compress(b"\0" * 16 * MB))
    with pytest.raises(ArchiveError) as refused, open_tar_stream(bomb, 100) as stream:
        while stream.read(MB):
            pass
    assert refused.value.code == "ratio"


def test_non_utf8_names_are_shown_losslessly() -> None:
    raw = b"dogs/hund\xe9 100%.png"
    shown = display_name(raw.decode("utf-8", "surrogateescape"))
    assert shown == "dogs/hund%E9 100%25.png" and original_name(shown).encode("utf-8", "surrogateescape") == raw
    assert display_name("caf\u00e9 100%.png") == "caf\u00e9 100%.png"  # valid UTF-8 is shown as it is


def _folder_zip(tmp_path: Path, roots: int, levels: int) -> Path:
    """A zip of one file and roots empty folders, each levels deep under its own root."""
    archive = tmp_path / "folders.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cats/c.png", b"png")
        for i in range(roots):
            zf.writestr(f"r{i}/" + "d/" * (levels - 1), b"")
    return archive


def test_folders_a_name_implies_count_as_entries(tmp_path: Path) -> None:
    """6 folder entries 10 levels deep are 60 folders on disk: past LIMITS' 50 entries, though only 7 members."""
    with pytest.raises(ArchiveError) as refused:
        _extract(_folder_zip(tmp_path, 6, 10))
    assert refused.value.code == "too_many_members"
    assert not (tmp_path / "tree").exists() or not any((tmp_path / "tree").iterdir())
    within = tmp_path / "within"
    within.mkdir()
    extracted = extract_archive(_folder_zip(within, 4, 10), within / "tree", LIMITS)
    assert extracted.entries == 2 + 4 * 10 and extracted.files == 1  # cats/, cats/c.png and the 40 folders


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize(("name", "code"), [("d/" * 2100 + "x.png", "too_deep"), ("p" * 300 + ".png", "name_too_long")],
                         ids=["2100-levels", "300-byte-part"])
def test_names_too_deep_or_too_long_are_refused_before_writing(tmp_path: Path, kind: str, name: str,
                                                               code: str) -> None:
    """Such a name made mkdir fail with `File name too long` (a 500); now it is refused with a code while checking."""
    entries = {"cats/c.png": b"png", name: b"png"}
    body = archives.zip_bytes(entries) if kind == "zip" else archives.tar_bytes(entries)
    archive = tmp_path / f"a.{'zip' if kind == 'zip' else 'tgz'}"
    archive.write_bytes(body)
    with pytest.raises(ArchiveError) as refused:
        _extract(archive)
    assert refused.value.code == code and len(str(refused.value)) < 300
    assert not (tmp_path / "tree").exists() or not any((tmp_path / "tree").iterdir())


def test_admit_sees_the_plan_before_anything_is_written(tmp_path: Path) -> None:
    """A storage quota's hook: it gets the entries and bytes, and its refusal leaves the target empty."""
    seen: list[tuple[int, int]] = []

    def admit(plan: Plan) -> None:
        seen.append((plan.entries, plan.bytes))
        raise ArchiveError("over quota", "quota")

    archive = _write(tmp_path, lambda: (archives.zip_bytes({"a/1.png": b"x" * 10, "a/b/2.png": b"y" * 5}), "a.zip"))
    with pytest.raises(ArchiveError):
        extract_archive(archive, tmp_path / "tree", LIMITS, admit=admit)
    assert seen == [(4, 15)]  # a/, a/1.png, a/b/, a/b/2.png
    assert not any((tmp_path / "tree").iterdir())
