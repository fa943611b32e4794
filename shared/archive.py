"""Safe archive extraction (zip, tar, tar.gz/bz2/xz): every member is checked before one byte is written.

Refused (shared.archive_plan): absolute paths, `..` entries, names deeper than MAX_DEPTH levels or longer than
MAX_NAME_BYTES, symlinks, hard links, device files and FIFOs, encrypted zip members, more than max_members
entries (files and folders, those a member's path implies included), more than max_bytes uncompressed, or a
member (zip) or the whole stream (compressed tar) expanding more than max_ratio times. A caller's admit(plan)
sees the checked plan (entries, bytes) before one byte is written: that is where a storage quota refuses it.
The structure itself (tar headers, a zip's central directory) is read in bounded memory by shared.archive_read
first. Names that are not valid UTF-8 are kept in their lossless escaped form (shared.files.display_name) and
listed so the caller can report them.
"""
from __future__ import annotations

import lzma
import os
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Generator

from graft.shared.archive_plan import ArchiveLimits, Member, Plan, open_zip, plan_tar, plan_zip
from graft.shared.archive_read import STREAM_ERRORS, ArchiveError, open_tar
from graft.shared.files import COPY_BLOCK, HERE, NameClaims, UploadError

__all__ = ["ArchiveError", "ArchiveLimits", "Extracted", "Plan", "extract_archive", "extract_zip_stream",
           "plan_zip_stream", "archive_kind"]
Sources = Generator[tuple[Member, "IO[bytes] | None"], None, None]
Admit = Callable[[Plan], None]  # sees a checked plan before anything is written; raises to refuse it


@dataclass
class Extracted:
    """What an extraction wrote (entries: the files and folders its plan counted)."""

    files: int = 0
    bytes: int = 0
    skipped: int = 0
    entries: int = 0
    non_utf8: list[str] = field(default_factory=list)


def _write(target: Path, root: Path, source: IO[bytes], declared: int, budget: list[int], replace: bool) -> int:
    """Copy source into a new file target (never through a link); stops past the declared size or the budget."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shown = target.relative_to(root)
    if not target.parent.resolve().is_relative_to(root):
        raise ArchiveError(f"member {str(shown)!r} would be written outside the target folder", "parent_path")
    if replace and target.is_file() and not target.is_symlink():
        target.unlink()
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        raise ArchiveError(f"member {str(shown)!r} appears twice in the archive", "duplicate") from None
    written = 0
    with os.fdopen(fd, "wb") as out:
        while block := source.read(COPY_BLOCK):
            written += len(block)
            budget[0] -= len(block)
            if written > declared or budget[0] < 0:
                raise ArchiveError(f"member {str(shown)!r} unpacks to more than it declares", "too_large")
            out.write(block)
    return written


def _extract_members(
    root: Path, opened: Sources, limits: ArchiveLimits,
    skip: Callable[[PurePosixPath], bool] | None, replace: bool = False, claims: NameClaims | None = None,
) -> Extracted:
    result, budget = Extracted(), [limits.max_bytes]
    try:
        for member, source in opened:
            if member.name == HERE:
                continue
            if skip is not None and skip(member.name):
                result.skipped += 1
            elif member.is_dir:
                if claims is not None:
                    claims.claim_folder(member.name)
                root.joinpath(*member.name.parts).mkdir(parents=True, exist_ok=True)
            else:
                if claims is not None:
                    try:
                        claims.claim(member.name)
                    except UploadError as exc:
                        raise ArchiveError(f"member {exc}", "duplicate") from None
                result.bytes += _write(root.joinpath(*member.name.parts), root, source, member.size, budget, replace)
                result.files += 1
    except ArchiveError:
        raise
    except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
        raise ArchiveError(f"a member is both a file and a folder: {exc.filename}", "duplicate") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, NotImplementedError,
            RuntimeError) as exc:  # not OSError: a full disk is the caller's to answer (507)
        raise ArchiveError(f"cannot extract the archive: {type(exc).__name__}: {exc}") from None
    finally:
        opened.close()  # closes the member and archive handles the generator holds, even after an error
    return result


def _zip_sources(archive: zipfile.ZipFile, members: list[Member]) -> Sources:
    for member in members:
        if member.is_dir:
            yield member, None
            continue
        with archive.open(member.handle) as source:  # type: ignore[arg-type]
            yield member, source


def _tar_sources(path: Path, members: list[Member], limits: ArchiveLimits) -> Sources:
    with open_tar(path, limits.max_ratio) as archive:
        for index, info in enumerate(archive):
            archive.members.clear()
            member = members[index] if index < len(members) else None
            if member is None or info.size != member.handle.size or info.type != member.handle.type:
                raise ArchiveError("the archive changed while it was being extracted")
            yield member, None if member.is_dir else archive.extractfile(info)


def archive_kind(path: Path) -> str:
    """"zip" or "tar" by content (not by file name); ArchiveError for anything else."""
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        with open_tar(path, ArchiveLimits().max_ratio) as archive:
            archive.next()
        return "tar"
    except ArchiveError:
        return "tar"  # a tar that breaks a rule on its first member: refused with that rule's code
    except STREAM_ERRORS:
        raise ArchiveError("not a zip or tar archive", "not_archive") from None


def extract_archive(
    path: Path, target: Path, limits: ArchiveLimits, skip: Callable[[PurePosixPath], bool] | None = None,
    admit: Admit | None = None,
) -> Extracted:
    """Check, then extract the zip or tar at path into the empty folder target; ArchiveError if refused.

    skip(name) is True for members to leave out (OS junk); they are checked (and counted) all the same.
    admit(plan), when given, runs before anything is written. After an error the caller removes target:
    files may already be written.
    """
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    if archive_kind(path) == "zip":
        with open(path, "rb") as stream, open_zip(stream, limits) as archive:
            plan = _admitted(plan_zip(archive, limits), admit)
            result = _extract_members(root, _zip_sources(archive, plan.members), limits, skip)
    else:
        plan = _admitted(plan_tar(path, limits), admit)
        result = _extract_members(root, _tar_sources(path, plan.members, limits), limits, skip)
    result.non_utf8, result.entries = plan.non_utf8, plan.entries
    return result


def _admitted(plan: Plan, admit: Admit | None) -> Plan:
    if not any(not m.is_dir for m in plan.members):
        raise ArchiveError("the archive is empty (no files in it)", "empty")
    if admit is not None:
        admit(plan)
    return plan


def plan_zip_stream(stream: IO[bytes], limits: ArchiveLimits) -> Plan:
    """Check a zip in a seekable stream by the same rules without extracting it (the stream is rewound)."""
    with open_zip(stream, limits) as archive:
        plan = plan_zip(archive, limits)
    stream.seek(0)
    return plan


def extract_zip_stream(folder: Path, stream: IO[bytes], budget: list[int], limits: ArchiveLimits,
                       claims: NameClaims | None = None) -> Extracted:
    """Extract a zip from a seekable stream by the same rules, within budget[0] bytes (reduced here) and
    limits (max_bytes lowered to the budget); a member already in claims is refused, the others are added."""
    limits = ArchiveLimits(limits.max_members, max(min(budget[0], limits.max_bytes), 0), limits.max_ratio)
    folder.mkdir(parents=True, exist_ok=True)
    with open_zip(stream, limits) as archive:
        plan = plan_zip(archive, limits)
        result = _extract_members(folder.resolve(), _zip_sources(archive, plan.members), limits, None,
                                  replace=True, claims=claims)
    budget[0] -= result.bytes
    result.non_utf8, result.entries = plan.non_utf8, plan.entries
    return result
