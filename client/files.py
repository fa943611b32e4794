"""Local files for uploads: which files a folder holds, zipping it, a streamed multipart body, upload parts."""
from __future__ import annotations

import io
import os
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

# phase ("zipping" counts files, "uploading" counts bytes), done, total
UploadProgress = Callable[[str, int, int], None]

# The server's own rule is graft.shared.files.is_junk_name (the client imports no other room; a unit test checks
# that the two agree): hidden names and OS litter are not data, so they are not even sent.
JUNK_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})
STORED_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".zip", ".gz", ".heic"})  # compressed already
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
PART_FILES = 200  # files per upload request (the server parses at most 1000 form parts)
PART_BYTES = 64 * 1024 * 1024


def is_junk_name(name: str) -> bool:
    """True for a hidden name or OS litter (.DS_Store, Thumbs.db, __MACOSX)."""
    return name.startswith(".") or name in JUNK_NAMES


def shown_name(name: str) -> str:
    """name as UTF-8 text: unchanged when it is UTF-8, else each byte that is not becomes %XX and "%" becomes %25.

    The server's rule (graft.shared.files.display_name), repeated here because the client imports no other Graft
    room: a local file whose name is not UTF-8 is sent under the name the server shows for such files, instead of
    making the upload fail (multipart file names are text).
    """
    if not any(0xDC80 <= ord(c) <= 0xDCFF for c in name):
        return name
    return "".join(f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else "%25" if c == "%" else c for c in name)


def local_files(root: Path, recursive: bool = True) -> list[tuple[str, Path]]:
    """(relative posix name, path) for every file below root, skipping hidden files and OS litter like the server;
    names that are not UTF-8 in their escaped form (shown_name)."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_junk_name(d)) if recursive else []
        found += [(shown_name((Path(folder) / n).relative_to(root).as_posix()), Path(folder) / n) for n in names
                  if not is_junk_name(n)]
    return sorted(found)


def upload_parts(files: list[tuple[str, Path]]) -> Iterator[list[tuple[str, Path]]]:
    """Group files into upload requests of at most PART_FILES files and about PART_BYTES bytes."""
    part: list[tuple[str, Path]] = []
    size = 0
    for name, path in files:
        try:
            length = path.stat().st_size
        except OSError:
            length = 0
        if part and (len(part) >= PART_FILES or size + length > PART_BYTES):
            yield part
            part, size = [], 0
        part.append((name, path))
        size += length
    if part:
        yield part


def zip_folder(files: list[tuple[str, Path]], out: Path, on_progress: UploadProgress | None = None) -> None:
    """Zip (name, path) files into out; images and archives are stored, since deflating them gains nothing."""
    with zipfile.ZipFile(out, "w", allowZip64=True) as archive:
        for done, (name, path) in enumerate(files, 1):
            method = zipfile.ZIP_STORED if path.suffix.lower() in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            archive.write(path, name, compress_type=method)
            if on_progress:
                on_progress("zipping", done, len(files))


class MultipartBody:
    """A multipart/form-data body read in blocks (never whole): a 'name' field, then the archive as 'file'."""

    def __init__(self, path: Path, name: str, on_progress: UploadProgress | None = None) -> None:
        self.boundary = f"graft-{uuid.uuid4().hex}"
        filename = path.name.encode("ascii", "replace").decode().replace('"', "_")
        name = " ".join(name.split())  # no line breaks inside the form field
        self._head = (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n"
                      f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\""
                      "\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._path, self._on_progress = path, on_progress
        self._length = len(self._head) + path.stat().st_size + len(self._tail)
        self._parts: list[Any] = []
        self.seek(0)

    @property
    def content_type(self) -> str:
        """The Content-Type header that goes with this body."""
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        """Bytes read so far (requests and urllib3 ask, to size the body and to rewind it for a retry)."""
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        """Rewind to the start (all a retry needs); other positions are not supported."""
        if offset != 0 or whence != 0:
            raise io.UnsupportedOperation("MultipartBody can only seek to 0")
        self.close()
        self._parts = [io.BytesIO(self._head), open(self._path, "rb"), io.BytesIO(self._tail)]
        self._position = 0
        return 0

    def read(self, size: int = -1) -> bytes:
        """The next block of the body (b"" at the end)."""
        size = size if size and size > 0 else 1 << 20
        while self._parts:
            block = self._parts[0].read(size)
            if block:
                self._position += len(block)
                if self._on_progress:
                    self._on_progress("uploading", self._position, self._length)
                return block
            self._parts.pop(0).close()
        return b""

    def close(self) -> None:
        """Close the archive file."""
        for part in self._parts:
            part.close()
        self._parts = []
