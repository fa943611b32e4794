"""Checking an archive before anything of it is written: each member's name and kind, and what the whole
would create (files and folders, bytes), against ArchiveLimits. shared.archive extracts what passes.

A member's folders count as entries even when the archive lists none: 100 names 300 levels deep would make
30,000 folders, so they count as 30,100 entries (and 300 levels is refused anyway: shared.files.MAX_DEPTH).
"""
from __future__ import annotations

import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from graft.shared.archive_read import RATIO_MIN_BYTES, STREAM_ERRORS, ArchiveError, check_zip_directory, open_tar
from graft.shared.files import HERE, Entries, UploadError, display_name, safe_relative, short_repr

ZIP_UTF8_FLAG = 0x800


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


@dataclass
class Plan:
    """A checked archive: its members, the names that were not UTF-8, and the files and folders (entries) and
    bytes extracting it creates."""

    members: list[Member] = field(default_factory=list)
    non_utf8: list[str] = field(default_factory=list)
    entries: int = 0
    bytes: int = 0


def _safe_name(name: str, is_dir: bool) -> PurePosixPath:
    """Refuse absolute and escaping names outright (no silent stripping); HERE for the archive's own "./"."""
    posix = name.replace("\\", "/")
    if is_dir and all(part in ("", ".") for part in posix.split("/")):
        return HERE
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":" and posix[0].isalpha()):
        raise ArchiveError(f"member {short_repr(name)} has an absolute path", "absolute_path")
    if ".." in posix.split("/"):
        raise ArchiveError(f"member {short_repr(name)} points outside the archive ('..')", "parent_path")
    try:
        return safe_relative(name)
    except UploadError as exc:
        raise ArchiveError(f"member {exc}", exc.code) from None


def _check_totals(count: int, total: int, limits: ArchiveLimits) -> None:
    if count > limits.max_members:
        raise ArchiveError(f"the archive makes more than {limits.max_members} files and folders "
                           "(GRAFT_ARCHIVE_MAX_MEMBERS)", "too_many_members")
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


def plan_zip(archive: zipfile.ZipFile, limits: ArchiveLimits) -> Plan:
    """Check every zip member against the rules and limits."""
    infos = archive.infolist()
    _check_totals(len(infos), 0, limits)
    plan, entries = Plan(), Entries()
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
        _add(plan, entries, Member(safe, info.file_size, info.is_dir(), info), limits)
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_MIN_BYTES and ratio > limits.max_ratio:
            raise ArchiveError(f"member {name!r} expands {ratio:.0f} times (more than {limits.max_ratio}, "
                               "GRAFT_ARCHIVE_MAX_RATIO): a zip bomb?", "ratio")
        if not utf8:
            plan.non_utf8.append(str(safe))
    return plan


def _add(plan: Plan, entries: Entries, member: Member, limits: ArchiveLimits) -> None:
    """Add a checked member to plan, counting the folders its name implies, within the limits."""
    if member.name != HERE:
        entries.add(member.name, member.is_dir)
    plan.entries, plan.bytes = entries.total, plan.bytes + member.size
    _check_totals(plan.entries, plan.bytes, limits)
    plan.members.append(member)


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


def plan_tar(path: Path, limits: ArchiveLimits) -> Plan:
    """Read a tar's headers in one streaming pass and check them; a compressed stream is bounded by max_ratio."""
    compressed = max(path.stat().st_size, 1)
    plan, entries = Plan(), Entries()
    try:
        with open_tar(path, limits.max_ratio) as archive:
            for info in archive:
                archive.members.clear()  # streaming: do not keep every header in memory
                member, utf8 = _plan_tar_member(info)
                _add(plan, entries, member, limits)
                if plan.bytes >= RATIO_MIN_BYTES and plan.bytes > limits.max_ratio * compressed:
                    raise ArchiveError(f"the archive expands more than {limits.max_ratio} times its size "
                                       "(GRAFT_ARCHIVE_MAX_RATIO): a tar bomb?", "ratio")
                if not utf8:
                    plan.non_utf8.append(str(member.name))
    except ArchiveError:
        raise
    except (*STREAM_ERRORS, ValueError) as exc:
        raise ArchiveError(f"not a readable tar archive: {exc}") from None
    return plan
