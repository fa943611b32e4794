"""File names: the one junk-file rule and the one safe-relative-name rule, used by the API, workers and CLI."""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Iterable

JUNK_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})
COPY_BLOCK = 1 << 20  # bytes copied at a time when streaming uploads and archive members to disk


class UploadError(ValueError):
    """A client-supplied name or archive that cannot be stored safely."""


def is_junk_name(name: str) -> bool:
    """True for a hidden name or OS litter (.DS_Store, Thumbs.db, __MACOSX): not data, ignored silently everywhere."""
    return name.startswith(".") or name in JUNK_NAMES


def is_junk_path(parts: Iterable[str]) -> bool:
    """True when any part of a relative path is junk (see is_junk_name)."""
    return any(is_junk_name(part) for part in parts)


def safe_relative(name: str) -> PurePosixPath:
    """A client-supplied file name as a relative path that stays inside its folder, or UploadError."""
    if not name or "\x00" in name:
        raise UploadError("empty file name or NUL byte in a file name")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        raise UploadError(f"file name has no usable part: {name!r}")
    if ".." in parts:
        raise UploadError(f"file name may not contain '..': {name!r}")
    if any(len(p.encode("utf-8", "surrogatepass")) > 255 for p in parts):
        raise UploadError(f"file name part longer than 255 bytes: {name!r}")
    return PurePosixPath(*parts)
