"""File names: the one junk-file rule, the one safe-relative-name rule and the one way to show a name that is not
UTF-8, used by the API, workers and CLI."""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Iterable
from urllib.parse import unquote_to_bytes

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


class NameClaims:
    """The relative names one request stores: a name given twice, or a file that is also another's folder
    (`a` and `a/b.jpg`), is refused instead of one silently replacing the other."""

    def __init__(self) -> None:
        self.files: set[PurePosixPath] = set()
        self.folders: set[PurePosixPath] = set()

    def claim(self, name: PurePosixPath) -> None:
        """Record name as a file of this request, or UploadError naming the clash."""
        if name in self.files:
            raise UploadError(f"{str(name)!r} is sent more than once")
        if name in self.folders:
            raise UploadError(f"{str(name)!r} is both a file and a folder of other files")
        clash = next((parent for parent in name.parents if parent in self.files), None)
        if clash is not None:
            raise UploadError(f"{str(name)!r} is inside {str(clash)!r}, which is a file")
        self.files.add(name)
        self.folders.update(name.parents)


def _escaped(char: str) -> bool:
    return "\udc80" <= char <= "\udcff"  # how surrogateescape (os.fsdecode, tarfile) carries a byte that is not UTF-8


def display_name(name: str) -> str:
    """name as text that names its bytes exactly: unchanged when it is valid UTF-8; otherwise (name decoded with
    surrogateescape) each byte that is not UTF-8 becomes %XX and "%" becomes %25, so original_name gives it back."""
    if not any(_escaped(char) for char in name):
        return name
    return "".join(f"%{ord(c) - 0xDC00:02X}" if _escaped(c) else "%25" if c == "%" else c for c in name)


def original_name(shown: str) -> str:
    """The name (surrogateescape'd, as os functions take it) that display_name showed as shown."""
    return unquote_to_bytes(shown).decode("utf-8", "surrogateescape")


def listed_path(folder: Path, shown: str) -> Path:
    """The file folder/shown names: itself, or, when no such file exists, the non-UTF-8 name it is the display of."""
    direct = folder / shown
    if "%" not in shown or direct.exists() or direct.is_symlink():
        return direct
    return folder / original_name(shown)
