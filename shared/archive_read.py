"""Reading an archive's structure in bounded memory, before `tarfile` or `zipfile` trust what it declares.

tarfile reads a whole pax or GNU long-name header into memory at the size its 512-byte header declares (up to
8 GiB), follows chains of them by recursion, decompresses whatever one read of compressed input expands to, and
keeps global pax headers for the whole archive. zipfile reads the central directory at the size the end record
declares and builds an object per entry it finds there, whatever entry count that record claims. Here: tar
streams are decompressed by the bounded file readers (gzip, bz2, lzma) and cut off past max_ratio times their
size; extended headers are capped at MAX_HEADER bytes each (and in a chain, and for the global ones together);
sparse members are refused; a zip's central directory is walked entry by entry and refused past max_members
entries or past DIRECTORY_ENTRY_BYTES bytes per allowed entry, before zipfile opens it.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import tarfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from graft.shared.files import UploadError

MAX_HEADER = 64 * 1024  # the most bytes one pax or GNU long-name header may hold (PATH_MAX is 4096)
MAX_CHAIN = 8  # extended headers in a row before one member (pax, long name and long link make 3)
DIRECTORY_ENTRY_BYTES = 1024  # the central directory may average this many bytes per allowed entry
RATIO_MIN_BYTES = 1 << 20  # members (and streams) smaller than this are never refused for their ratio
EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK)
MAGIC = ((b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")), (b"BZh", bz2.BZ2File),
         (b"\xfd7zXZ\x00", lzma.LZMAFile))
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # zipfile inflates others (bzip2, lzma) without a bound
STREAM_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)  # a damaged tar or compressed stream
CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # one central directory entry's fixed part (46 bytes)


class ArchiveError(UploadError):
    """An archive refused before (or while) extracting; code names the rule it broke."""

    def __init__(self, message: str, code: str = "bad_archive") -> None:
        super().__init__(message)
        self.code = code


class _Capped(io.RawIOBase):
    """A decompressed stream that refuses to yield more than limit bytes (a bomb is stopped as it expands)."""

    def __init__(self, raw: IO[bytes], inner: IO[bytes], limit: int, ratio: int) -> None:
        self.raw, self.inner, self.limit, self.ratio, self.done = raw, inner, limit, ratio, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # noqa: ANN401 - a writable buffer
        data = self.inner.read(len(buffer))
        self.done += len(data)
        if self.done > self.limit:
            raise ArchiveError(f"the archive expands more than {self.ratio} times its size "
                               "(GRAFT_ARCHIVE_MAX_RATIO): a tar bomb?", "ratio")
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.inner.close()
        self.raw.close()  # a decompressing reader given a file object leaves it open
        super().close()


def open_tar_stream(path: Path, max_ratio: int) -> IO[bytes]:
    """The tar inside path (gzip, bzip2, xz or none, by content), decompressed in bounded steps and cut off past
    max_ratio times path's size."""
    raw = open(path, "rb")  # noqa: SIM115 - closed with the returned stream
    head = raw.read(6)
    raw.seek(0)
    inner: IO[bytes] = raw
    for magic, reader in MAGIC:
        if head.startswith(magic):
            inner = reader(raw)
            break
    limit = max_ratio * max(path.stat().st_size, 1) + RATIO_MIN_BYTES
    return io.BufferedReader(_Capped(raw, inner, limit, max_ratio), 64 * 1024)


class BoundedTarInfo(tarfile.TarInfo):
    """TarInfo that refuses an oversized or endless extended header before tarfile reads it into memory."""

    def _proc_member(self, tarfile: tarfile.TarFile) -> Any:  # noqa: ANN401 - tarfile's private hook
        if self.type in EXTENDED:
            if self.size > MAX_HEADER:
                raise ArchiveError(f"a tar extended header declares {self.size} bytes (more than {MAX_HEADER})",
                                   "header_too_large")
            chain = getattr(tarfile, "graft_chain", 0) + 1
            if chain > MAX_CHAIN:
                raise ArchiveError(f"more than {MAX_CHAIN} tar extended headers in a row", "header_too_large")
            tarfile.graft_chain = chain  # type: ignore[attr-defined]
        else:
            tarfile.graft_chain = 0  # type: ignore[attr-defined]
        member = super()._proc_member(tarfile)  # type: ignore[misc]
        if sum(len(k) + len(v) for k, v in tarfile.pax_headers.items()) > MAX_HEADER:
            raise ArchiveError(f"the tar's global headers hold more than {MAX_HEADER} bytes", "header_too_large")
        return member

    def _refuse_sparse(self, *_args: Any) -> Any:  # noqa: ANN401
        # Sparse maps are read without a bound (GNU 1.0 reads until a newline); no photo needs one.
        raise ArchiveError(f"member {self.name!r} is a sparse file", "special_file")

    _proc_sparse = _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


@contextmanager
def open_tar(path: Path, max_ratio: int) -> Iterator[tarfile.TarFile]:
    """A streaming TarFile over path with every bound above (iterate it once; clear .members as you go)."""
    with open_tar_stream(path, max_ratio) as stream, \
            tarfile.open(fileobj=stream, mode="r|", tarinfo=BoundedTarInfo, errors="surrogateescape") as archive:
        yield archive


def check_zip_directory(stream: IO[bytes], max_members: int) -> int:
    """Walk a zip's central directory as it really is (not as its end record claims) and return its entry count;
    ArchiveError past max_members entries or an oversized directory, before zipfile loads either."""
    try:
        end = zipfile._EndRecData(stream)  # type: ignore[attr-defined] # the end record, zip64 read through
    except OSError:
        end = None
    if not end:
        raise ArchiveError("not a readable zip archive: no end of central directory record")
    size, offset, location = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET], end[zipfile._ECD_LOCATION]  # type: ignore[attr-defined]
    if size > max_members * DIRECTORY_ENTRY_BYTES + MAX_HEADER:
        raise ArchiveError(f"the zip's central directory is {size} bytes: too large for "
                           f"{max_members} members (GRAFT_ARCHIVE_MAX_MEMBERS)", "too_many_members")
    start = location - size  # where zipfile looks too: the directory ends where the end records begin
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
    if start < 0 or offset < 0:
        raise ArchiveError("not a readable zip archive: its central directory lies outside the file")
    stream.seek(start)
    count = read = 0
    while read < size:
        fixed = stream.read(CENTRAL.size)
        if len(fixed) < CENTRAL.size or fixed[:4] != zipfile.stringCentralDir:  # type: ignore[attr-defined]
            raise ArchiveError("not a readable zip archive: a damaged central directory entry")
        fields = CENTRAL.unpack(fixed)
        if fields[6] not in ZIP_METHODS:
            raise ArchiveError(f"a zip member uses compression method {fields[6]}: only stored and deflated "
                               "members are accepted", "unsupported_compression")
        variable = fields[12] + fields[13] + fields[14]  # name, extra field and comment lengths
        stream.seek(variable, io.SEEK_CUR)
        read += CENTRAL.size + variable
        count += 1
        if count > max_members:
            raise ArchiveError(f"the archive has more than {max_members} members (GRAFT_ARCHIVE_MAX_MEMBERS)",
                               "too_many_members")
    stream.seek(0)
    return count
