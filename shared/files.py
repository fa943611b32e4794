"""File names: the one junk-file rule, the one safe-relative-name rule and the one way to show a name that is not
UTF-8, used by the API, workers and CLI."""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Iterable
from urllib.parse import unquote_to_bytes

JUNK_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})
COPY_BLOCK = 1 << 20  # bytes copied at a time when streaming uploads and archive members to disk
MAX_DEPTH = 32  # levels of a stored name (class/sub/file.jpg is 3; real data uses a handful); more is refused
MAX_NAME_BYTES = 1024  # a whole relative name (UTF-8): with the artifacts folder it stays far below PATH_MAX (4096)
ENTRY_BYTES = 4096  # what a file or folder takes on disk at least (a block and an inode): counted against quotas
HERE = PurePosixPath(".")


class UploadError(ValueError):
    """A client-supplied name or archive that cannot be stored safely; code names the rule it broke."""

    def __init__(self, message: str, code: str = "bad_name") -> None:
        super().__init__(message)
        self.code = code


def stored_cost(size: int, entries: int) -> int:
    """The bytes a stored tree counts against a storage quota: its contents plus ENTRY_BYTES per file and folder,
    so that empty files and folders (which cost inodes and blocks) are not free."""
    return size + ENTRY_BYTES * entries


def short_repr(name: str) -> str:
    """repr(name), its middle left out past 80 characters."""
    return repr(name if len(name) <= 80 else f"{name[:60]}...{name[-16:]}")  # a 4 KB name makes no readable error


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
        raise UploadError(f"file name has no usable part: {short_repr(name)}")
    if ".." in parts:
        raise UploadError(f"file name may not contain '..': {short_repr(name)}", "parent_path")
    if len(parts) > MAX_DEPTH:
        raise UploadError(f"file name has {len(parts)} levels, more than {MAX_DEPTH}: {short_repr(name)}", "too_deep")
    sizes = [len(p.encode("utf-8", "surrogatepass")) for p in parts]
    if max(sizes) > 255:
        raise UploadError(f"file name part longer than 255 bytes: {short_repr(name)}", "name_too_long")
    if sum(sizes) + len(parts) - 1 > MAX_NAME_BYTES:
        raise UploadError(f"file name longer than {MAX_NAME_BYTES} bytes: {short_repr(name)}", "name_too_long")
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

    def claim_folder(self, name: PurePosixPath) -> None:
        """Record name as a folder this request makes (an archive's folder entry)."""
        self.folders.update((name, *name.parents))

    @property
    def entries(self) -> int:
        """Files and folders claimed (a name's parent folders included, the upload folder itself not)."""
        return len(self.files) + len(self.folders) - (HERE in self.folders)


class Entries:
    """Counts the files and folders a list of relative names creates, each folder once (parents included):
    `a/b/c.jpg` is three entries, and a lone 300-level name is 300."""

    def __init__(self) -> None:
        self.files = 0
        self.folders: set[PurePosixPath] = set()

    def add(self, name: PurePosixPath, is_dir: bool) -> None:
        """Count name (a file, or a folder when is_dir) and every folder above it not yet counted."""
        if not is_dir:
            self.files += 1
        for folder in ((name,) if is_dir else ()) + tuple(name.parents)[:-1]:  # parents end with "."
            if folder in self.folders:
                break  # a counted folder's parents are counted too
            self.folders.add(folder)

    @property
    def total(self) -> int:
        """Files and folders so far."""
        return self.files + len(self.folders)


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
