"""Archive builders and the table of hostile and awkward uploads, shared by the unit and service tiers.

CASES rows are (id, builder returning (body, filename), expected HTTP status, error code (4xx) or issue
code (202), the file the issue names). The 400 rows are refused by graft.shared.archive itself; the 413
row is refused by the API's body limit; the 202 rows extract and are then reported on by the inspection.
The limits they assume: the API's small_app (1 MB bodies, 50 members, 4 MB unpacked, ratio 100).
"""
from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import warnings
import zipfile
import zlib
from typing import Callable, Iterable

import cv2
import numpy as np

MB = 1024 * 1024
JUNK = {".DS_Store", "__MACOSX", "Thumbs.db", "desktop.ini", ".thumbs", "._c0.png", ".git"}


def image(seed: int, ext: str = ".png", size: int = 20) -> bytes:
    """A small random-noise picture encoded as ext."""
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(ext, rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


def good(prefix: str = "", per_class: int = 3) -> dict[str, bytes]:
    """A valid two-class dataset (cats, dogs) as archive entries under prefix."""
    return {f"{prefix}{cls}/{cls[0]}{i}.png": image(seed * 100 + i)
            for seed, cls in enumerate(("cats", "dogs")) for i in range(per_class)}


def zip_bytes(entries: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    """A zip holding entries (name -> data)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


def tar_bytes(entries: dict[str, bytes], extra: Iterable[tarfile.TarInfo] = (), mode: str = "w:gz") -> bytes:
    """A (gzipped by default) GNU tar holding entries, then the header-only members in extra."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.GNU_FORMAT, errors="surrogateescape") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return out.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    """A tar header of type kind (symlink, hard link, device...) with no data."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.devmajor, info.devminor = kind, linkname, 1, 3
    return info


def huge_png(side: int = 30000) -> bytes:
    """A 1-bit side x side PNG: about 110 KB on disk, 900 megapixels decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)
    idat = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zip_symlink() -> bytes:
    """A good zip plus a Unix symlink member pointing at /etc/passwd."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in good().items():
            archive.writestr(name, data)
        info = zipfile.ZipInfo("cats/link.png")
        info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    return out.getvalue()


def zip_non_utf8() -> bytes:
    """A good zip plus a member whose name is raw Latin-1 bytes without the UTF-8 flag."""
    data = zip_bytes({**good(), "cats/cafX.png": image(77)})
    return data.replace(b"cats/cafX.png", b"cats/caf\xe9.png")


def zip_duplicate() -> bytes:
    """The same name twice: the first copy is written before the second is refused (a partial extraction)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name
        return zip_pairs([*good().items(), ("cats/zz.png", image(1)), ("cats/zz.png", image(2))])


def zip_pairs(entries: list[tuple[str, bytes]]) -> bytes:
    """A zip holding entries in order, repeated names allowed."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return out.getvalue()


def truncated_jpeg() -> bytes:
    """The first half of a JPEG."""
    data = image(5, ".jpg", size=120)
    return data[: len(data) // 2]


# (id, builder returning (body, filename), expected status, error code (4xx) or issue code (202), file named)
CASES: list[tuple[str, Callable[[], tuple[bytes, str]], int, str | None, str | None]] = [
    ("dotdot", lambda: (zip_bytes({**good(), "../escape.png": image(1)}), "a.zip"), 400, "parent_path", None),
    ("absolute", lambda: (tar_bytes({**good(), "/tmp/graft-escape.png": image(1)}), "a.tgz"),
     400, "absolute_path", None),
    ("tar-symlink", lambda: (tar_bytes(good(), [special("cats/l.png", tarfile.SYMTYPE, "/etc/passwd")]), "a.tgz"),
     400, "symlink", None),
    ("zip-symlink", lambda: (zip_symlink(), "a.zip"), 400, "symlink", None),
    ("hardlink", lambda: (tar_bytes(good(), [special("dogs/h.png", tarfile.LNKTYPE, "cats/c0.png")]), "a.tgz"),
     400, "hardlink", None),
    ("device", lambda: (tar_bytes(good(), [special("cats/null", tarfile.CHRTYPE)]), "a.tar"),
     400, "special_file", None),
    ("zip-bomb", lambda: (zip_bytes({**good(), "cats/b.png": b"\0" * 2 * MB}, zipfile.ZIP_DEFLATED), "a.zip"),
     400, "ratio", None),
    ("tar-bomb", lambda: (tar_bytes({**good(), "cats/b.png": b"\0" * 3 * MB}), "a.tgz"), 400, "ratio", None),
    ("too-many-members", lambda: (zip_bytes({f"c{i % 2}/{i}.png": b"x" for i in range(60)}), "a.zip"),
     400, "too_many_members", None),
    ("too-many-bytes", lambda: (zip_bytes({f"cats/{i}.bin": b"\0" * 900_000 for i in range(5)},
                                          zipfile.ZIP_DEFLATED), "a.zip"), 400, "too_large", None),
    ("duplicate-member", lambda: (zip_duplicate(), "a.zip"), 400, "duplicate", None),
    ("file-and-folder", lambda: (zip_bytes({**good(), "cats/x": b"file", "cats/x/y.png": image(3)}), "a.zip"),
     400, "duplicate", None),
    ("not-an-archive", lambda: (b"hello, world\n" * 50, "a.zip"), 400, "not_archive", None),
    ("empty-zip", lambda: (zip_bytes({}), "a.zip"), 400, "empty", None),
    ("empty-tar", lambda: (tar_bytes({}), "a.tgz"), 400, "empty", None),
    ("oversized-body", lambda: (os.urandom(MB + MB // 2), "a.zip"), 413, None, None),
    ("huge-png", lambda: (zip_bytes({**good(), "cats/huge.png": huge_png()}, zipfile.ZIP_DEFLATED), "a.zip"),
     202, "too_large", "cats/huge.png"),
    ("truncated-jpeg", lambda: (zip_bytes({**good(), "dogs/cut.jpg": truncated_jpeg()}), "a.zip"),
     202, "truncated", "dogs/cut.jpg"),
    ("text-as-jpg", lambda: (zip_bytes({**good(), "cats/notes.jpg": b"shopping list\n"}), "a.zip"),
     202, "not_image", "cats/notes.jpg"),
    ("zero-byte", lambda: (zip_bytes({**good(), "dogs/empty.png": b""}), "a.zip"),
     202, "zero_byte", "dogs/empty.png"),
    ("single-class", lambda: (zip_bytes({"only/a.png": image(1), "only/b.png": image(2)}), "a.zip"),
     202, "too_few_classes", None),
    ("nested-junk", lambda: (zip_bytes({**good("set/"), "set/.DS_Store": b"\0\0\0\1Bud1",
                                        "__MACOSX/set/cats/._c0.png": b"\0", "set/cats/.thumbs/t.png": image(9),
                                        "set/dogs/Thumbs.db": b"\xd0\xcf", "set/dogs/sub/desktop.ini": b"[x]",
                                        ".git/HEAD": b"ref"}), "a.zip"),
     202, None, None),
    ("non-utf8-zip", lambda: (zip_non_utf8(), "a.zip"), 202, "non_utf8_name", "cats/caf%E9.png"),
    ("non-utf8-tar", lambda: (tar_bytes({**good(), b"dogs/hund\xe9.png".decode("utf-8", "surrogateescape"): image(78)}),
                              "a.tgz"), 202, "non_utf8_name", "dogs/hund%E9.png"),
]


def _gzip_stream(parts: Iterable[bytes]) -> bytes:
    """parts gzipped one by one (a 200 MB body never exists at once)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(packer.compress(part) for part in parts) + packer.flush()


def _tar_block(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(tarfile.USTAR_FORMAT if kind == tarfile.XHDTYPE else tarfile.GNU_FORMAT)


def tar_huge_header(kind: bytes, size: int = 200 * MB) -> bytes:
    """A gzipped tar whose first member is a pax (kind "x") or GNU long-name ("L") header of size bytes, then
    a picture: about 200 KB that tarfile alone reads into 200 MB of memory."""
    if kind == tarfile.XHDTYPE:  # one pax record "<length> path=aaa...\n" of exactly size bytes
        prefix = f"{size} path=".encode()
        body = [prefix] + [b"a" * MB] * ((size - len(prefix) - 1) // MB) + [b"a" * ((size - len(prefix) - 1) % MB), b"\n"]
    else:
        body = [b"a" * MB] * (size // MB) + [b"a" * (size % MB)]
    pad = b"\0" * (-size % 512)
    member = image(4)
    return _gzip_stream([_tar_block("././@Header", kind, size), *body, pad, _tar_block("cats/c.png", tarfile.REGTYPE,
                         len(member)), member, b"\0" * (-len(member) % 512), b"\0" * 1024])


def tar_header_chain(count: int = 12) -> bytes:
    """A tar with count small pax headers in a row before one member (tarfile recurses once per header)."""
    record = b"20 comment=xxxxxxxx\n"
    blocks = [_tar_block("././@PaxHeader", tarfile.XHDTYPE, len(record)) + record + b"\0" * (512 - len(record))]
    member = image(4)
    return _gzip_stream([*blocks * count, _tar_block("cats/c.png", tarfile.REGTYPE, len(member)), member,
                         b"\0" * (-len(member) % 512), b"\0" * 1024])


def zip_lying_count(entries: int = 65_000) -> bytes:
    """A zip holding entries empty members whose end record declares 1 (zipfile reads them all regardless)."""
    local, central = bytearray(), bytearray()
    for i in range(entries):
        name = str(i).encode()
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0,
                               0, 0, 0, len(local)) + name
        local += struct.pack("<4s5HL2L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local), 0)
    return bytes(local + central + end)


def zip_bzip2_bomb() -> bytes:
    """A zip whose member is bzip2-compressed (zipfile inflates each read of it without a bound)."""
    return zip_bytes({**good(), "cats/b.png": b"\0" * 2 * MB}, zipfile.ZIP_BZIP2)


# Archives whose structure alone would make tarfile or zipfile allocate without a bound: (id, builder taking
# the header size in MB and returning (body, filename), error code). Refused by graft.shared.archive_read.
STRUCTURE_CASES: list[tuple[str, Callable[[int], tuple[bytes, str]], str]] = [
    ("huge-pax-header", lambda mb: (tar_huge_header(tarfile.XHDTYPE, mb * MB), "a.tgz"), "header_too_large"),
    ("huge-long-name", lambda mb: (tar_huge_header(tarfile.GNUTYPE_LONGNAME, mb * MB), "a.tgz"), "header_too_large"),
    ("header-chain", lambda _mb: (tar_header_chain(), "a.tgz"), "header_too_large"),
    ("sparse-member", lambda _mb: (tar_bytes(good(), [special("cats/s.png", tarfile.GNUTYPE_SPARSE)]), "a.tgz"),
     "special_file"),
    ("zip-lying-count", lambda _mb: (zip_lying_count(), "a.zip"), "too_many_members"),
    ("zip-bzip2", lambda _mb: (zip_bzip2_bomb(), "a.zip"), "unsupported_compression"),
]
