"""Safe archive extraction (zip, tar, tar.gz/bz2/xz): every member is checked before one byte is written.

Refused: absolute paths, `..` entries, symlinks, hard links, device files and FIFOs, encrypted zip members,
more than max_members entries, more than max_bytes uncompressed, or a member (zip) or the whole stream
(compressed tar) expanding more than max_ratio times. The structure itself (tar headers, a zip's central
directory) is read in bounded memory by shared.archive_read first. Names that are not valid UTF-8 are kept
in their lossless escaped form (shared.files.display_name) and listed so the caller can report them.
"""
from __future__ import annotations

import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Generator

from graft.shared.archive_read import RATIO_MIN_BYTES, STREAM_ERRORS, ArchiveError, check_zip_directory, open_tar
from graft.shared.files import COPY_BLOCK, NameClaims, UploadError, display_name, safe_relative

__all__ = ["ArchiveError", "ArchiveLimits", "Extracted", "extract_archive", "extract_zip_stream", "archive_kind"]
ZIP_UTF8_FLAG = 0x800
HERE = PurePosixPath(".")  # a tar's own "./" entry


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds checked before extraction (the defaults match shared.config's)."""

    max_members: int = 100_000
    max_bytes: int = 10 * 1024**3
    max_ratio: int = 100


@dataclass
class Member:
    """One checked entry: its safe relative name, declared size, and the archive's handle for it."""

    name: PurePosixPath
    size: int
    is_dir: bool
    handle: zipfile.ZipInfo | tarfile.TarInfo


Sources = Generator[tuple[Member, "IO[bytes] | None"], None, None]


@dataclass
class Extracted:
    """What an extraction wrote."""

    files: int = 0
    bytes: int = 0
    skipped: int = 0
    non_utf8: list[str] = field(default_factory=list)


def _safe_name(name: str, is_dir: bool) -> PurePosixPath:
    """Refuse absolute and escaping names outright (no silent stripping); HERE for the archive's own "./"."""
    posix = name.replace("\\", "/")
    if is_dir and all(part in ("", ".") for part in posix.split("/")):
        return HERE
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":" and posix[0].isalpha()):
        raise ArchiveError(f"member {name!r} has an absolute path", "absolute_path")
    if ".." in posix.split("/"):
        raise ArchiveError(f"member {name!r} points outside the archive ('..')", "parent_path")
    try:
        return safe_relative(name)
    except UploadError as exc:
        raise ArchiveError(f"member {name!r}: {exc}", "bad_name") from None


def _check_totals(count: int, total: int, limits: ArchiveLimits) -> None:
    if count > limits.max_members:
        raise ArchiveError(f"the archive has more than {limits.max_members} members (GRAFT_ARCHIVE_MAX_MEMBERS)",
                           "too_many_members")
    if total > limits.max_bytes:
        raise ArchiveError(f"the archive would unpack to more than {limits.max_bytes} bytes "
                           "(GRAFT_ARCHIVE_MAX_BYTES)", "too_large")


def _zip_name(info: zipfile.ZipInfo) -> tuple[str, bool]:
    """The member's name and whether it was valid UTF-8 (names without the UTF-8 flag often are); a name that
    is not is given in its escaped form, which names the original bytes."""
    if info.flag_bits & ZIP_UTF8_FLAG:
        return info.filename, True
    raw = info.filename.encode("cp437")  # zipfile decoded the bytes as cp437: this is what the archive holds
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return display_name(raw.decode("utf-8", "surrogateescape")), False


def open_zip(stream: IO[bytes], limits: ArchiveLimits) -> zipfile.ZipFile:
    """Open a zip, refusing one whose real central directory is too large before zipfile loads it."""
    try:
        check_zip_directory(stream, limits.max_members)
        return zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise ArchiveError(f"not a readable zip archive: {exc}") from None


def plan_zip(archive: zipfile.ZipFile, limits: ArchiveLimits) -> tuple[list[Member], list[str]]:
    """Check every zip member against the rules and limits; returns the members and the non-UTF-8 names."""
    infos = archive.infolist()
    _check_totals(len(infos), 0, limits)
    members, non_utf8, total = [], [], 0
    for info in infos:
        name, utf8 = _zip_name(info)
        safe = _safe_name(name, info.is_dir())
        kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
        if kind == stat.S_IFLNK:
            raise ArchiveError(f"member {name!r} is a symbolic link", "symlink")
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveError(f"member {name!r} is a device file, FIFO or socket", "special_file")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"member {name!r} is encrypted", "encrypted")
        total += info.file_size
        _check_totals(len(infos), total, limits)
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_MIN_BYTES and ratio > limits.max_ratio:
            raise ArchiveError(f"member {name!r} expands {ratio:.0f} times (more than {limits.max_ratio}, "
                               "GRAFT_ARCHIVE_MAX_RATIO): a zip bomb?", "ratio")
        if not utf8:
            non_utf8.append(str(safe))
        members.append(Member(safe, info.file_size, info.is_dir(), info))
    return members, non_utf8


def _tar_name(info: tarfile.TarInfo) -> tuple[str, bool]:
    shown = display_name(info.name)  # tarfile decodes with surrogateescape: lone surrogates are non-UTF-8 bytes
    return shown, shown == info.name


def _plan_tar_member(info: tarfile.TarInfo) -> tuple[Member, bool]:
    name, utf8 = _tar_name(info)
    safe = _safe_name(name, info.isdir())
    if info.issym():
        raise ArchiveError(f"member {name!r} is a symbolic link", "symlink")
    if info.islnk():
        raise ArchiveError(f"member {name!r} is a hard link", "hardlink")
    if not (info.isreg() or info.isdir()):
        raise ArchiveError(f"member {name!r} is a device file, FIFO or other special file", "special_file")
    return Member(safe, info.size if info.isreg() else 0, info.isdir(), info), utf8


def plan_tar(path: Path, limits: ArchiveLimits) -> tuple[list[Member], list[str]]:
    """Read a tar's headers in one streaming pass and check them; a compressed stream is bounded by max_ratio."""
    compressed = max(path.stat().st_size, 1)
    members, non_utf8, total = [], [], 0
    try:
        with open_tar(path, limits.max_ratio) as archive:
            for info in archive:
                archive.members.clear()  # streaming: do not keep every header in memory
                member, utf8 = _plan_tar_member(info)
                total += member.size
                _check_totals(len(members) + 1, total, limits)
                if total >= RATIO_MIN_BYTES and total > limits.max_ratio * compressed:
                    raise ArchiveError(f"the archive expands more than {limits.max_ratio} times its size "
                                       "(GRAFT_ARCHIVE_MAX_RATIO): a tar bomb?", "ratio")
                if not utf8:
                    non_utf8.append(str(member.name))
                members.append(member)
    except ArchiveError:
        raise
    except (*STREAM_ERRORS, ValueError) as exc:
        raise ArchiveError(f"not a readable tar archive: {exc}") from None
    return members, non_utf8


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
) -> Extracted:
    """Check, then extract the zip or tar at path into the empty folder target; ArchiveError if refused.

    skip(name) is True for members to leave out (OS junk); they are checked all the same. After an error
    the caller removes target: files may already be written.
    """
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    if archive_kind(path) == "zip":
        with open(path, "rb") as stream, open_zip(stream, limits) as archive:
            members, non_utf8 = plan_zip(archive, limits)
            _require_files(members)
            result = _extract_members(root, _zip_sources(archive, members), limits, skip)
    else:
        members, non_utf8 = plan_tar(path, limits)
        _require_files(members)
        result = _extract_members(root, _tar_sources(path, members, limits), limits, skip)
    result.non_utf8 = non_utf8
    return result


def _require_files(members: list[Member]) -> None:
    if not any(not m.is_dir for m in members):
        raise ArchiveError("the archive is empty (no files in it)", "empty")


def extract_zip_stream(folder: Path, stream: IO[bytes], budget: list[int], limits: ArchiveLimits,
                       claims: NameClaims | None = None) -> Extracted:
    """Extract a zip from a seekable stream by the same rules, within budget[0] bytes (reduced here) and
    limits (max_bytes lowered to the budget); a member already in claims is refused, the others are added."""
    limits = ArchiveLimits(limits.max_members, max(min(budget[0], limits.max_bytes), 0), limits.max_ratio)
    folder.mkdir(parents=True, exist_ok=True)
    with open_zip(stream, limits) as archive:
        members, non_utf8 = plan_zip(archive, limits)
        result = _extract_members(folder.resolve(), _zip_sources(archive, members), limits, None, replace=True,
                                  claims=claims)
    budget[0] -= result.bytes
    result.non_utf8 = non_utf8
    return result
