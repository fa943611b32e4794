"""Multipart bodies, read once per request with strict rules: every upload endpoint reads its form through here.

werkzeug's sansio decoder does the parsing; this loop (the shape of werkzeug's own MultiPartParser.parse) adds
what Graft needs: more than GRAFT_MAX_FORM_PARTS parts, or a field sent twice, is a 400 naming the field; a
file name that is not UTF-8 is kept in its lossless escaped form (shared.files.display_name) instead of making
werkzeug drop the whole form; and a caller may say where a file part is written (datasets stream straight to
their staging folder). The body itself is bounded before this runs (api.admission).
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from typing import IO, Callable

from flask import Response, after_this_request, g, request
from werkzeug.datastructures import FileStorage, Headers
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from graft.api.context import config
from graft.api.errors import APIError
from graft.shared.files import display_name

READ_BLOCK = 64 * 1024
FIELD_MAX = 64 * 1024  # a form field that is not a file is a number or a short text: held in memory, so kept small
SPOOL = 512 * 1024  # a file part smaller than this stays in memory, a larger one goes to an unnamed temporary file
_CONTINUATION = re.compile(rb"\r?\n[ \t]")

OpenFile = Callable[[str, str], IO[bytes]]  # (field name, file name) -> where the part's bytes go


@dataclass
class Form:
    """A multipart body's fields (each name once) and file parts (display file names), in the order sent."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[FileStorage] = field(default_factory=list)

    def getlist(self, name: str) -> list[FileStorage]:
        """The file parts sent under field name."""
        return [part for part in self.files if part.name == name]


class _Decoder(MultipartDecoder):
    """werkzeug's decoder, except that a part header that is not UTF-8 is kept (surrogateescape) instead of
    failing the whole body: the file name is then shown escaped."""

    def _parse_headers(self, data: bytes | bytearray) -> Headers:
        lines = _CONTINUATION.sub(b" ", bytes(data)).splitlines()
        pairs = [line.strip(b" \t").decode("utf-8", "surrogateescape").partition(":") for line in lines]
        return Headers([(name.strip(" \t"), value.strip(" \t")) for name, _, value in pairs if name.strip()])


def _spool(_name: str, _filename: str) -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(SPOOL)  # noqa: SIM115 - owned by the FileStorage, closed with the request


def _boundary() -> bytes:
    _, options = parse_options_header(request.headers.get("Content-Type", ""))
    boundary = options.get("boundary", "")
    if not boundary or not boundary.isascii():
        raise APIError(400, "malformed multipart body: no boundary in Content-Type")
    return boundary.encode("ascii")


def _parse(open_file: OpenFile, opened: list[IO[bytes]]) -> Form:
    max_parts = config().max_form_parts
    # The decoder's bound is on its buffer (a read block plus what it keeps to find the next boundary): it caps a
    # part's headers; field values are capped by FIELD_MAX below.
    decoder = _Decoder(_boundary(), max_form_memory_size=4 * READ_BLOCK)
    form, parts, value, sink = Form(), 0, bytearray(), None
    current: Field | File | None = None
    stream = request.stream
    while True:
        data = stream.read(READ_BLOCK)
        decoder.receive_data(data or None)
        event = decoder.next_event()
        while not isinstance(event, (Epilogue, NeedData)):
            if isinstance(event, (Field, File)):
                parts += 1
                name = display_name(event.name)  # the headers may hold bytes that are not UTF-8
                if parts > max_parts:
                    raise APIError(400, f"more than {max_parts} parts in the form (GRAFT_MAX_FORM_PARTS)",
                                   field=name, limit=max_parts)
                if isinstance(event, Field) and (name in form.fields or form.getlist(name)):
                    raise APIError(400, f"field {name} is sent more than once", field=name)
                current, value = event, bytearray()
                sink = open_file(event.name, display_name(event.filename)) if isinstance(event, File) else None
                if sink is not None:
                    opened.append(sink)
            elif isinstance(event, Data) and current is not None:
                if sink is None:
                    value += event.data
                    if len(value) > FIELD_MAX:
                        name = display_name(current.name)
                        raise APIError(400, f"field {name} is longer than {FIELD_MAX} bytes", field=name)
                else:
                    sink.write(event.data)
                if not event.more_data:
                    _finish(form, current, value, sink)
                    current, sink = None, None
            event = decoder.next_event()
        if isinstance(event, Epilogue) or not data:
            return form


def _finish(form: Form, part: Field | File, value: bytearray, sink: IO[bytes] | None) -> None:
    name = display_name(part.name)
    if isinstance(part, File) and sink is not None:
        if name in form.fields:
            raise APIError(400, f"field {name} is sent more than once", field=name)
        sink.seek(0)
        form.files.append(FileStorage(sink, display_name(part.filename), name, headers=part.headers))
    else:
        form.fields[name] = value.decode("utf-8", "replace")


def read_form(open_file: OpenFile = _spool) -> Form:
    """This request's multipart form, parsed on first use (open_file: where file parts go); 400 if malformed."""
    if "graft_form" not in g:
        if request.mimetype != "multipart/form-data":
            g.graft_form = Form()
        else:
            g.graft_form, g.graft_opened = Form(), []
            after_this_request(_close_files)
            try:
                g.graft_form = _parse(open_file, g.graft_opened)
            except ValueError as exc:  # werkzeug's decoder: a truncated or malformed body
                raise APIError(400, f"malformed multipart body: {exc}") from None
    return g.graft_form


def _close_files(response: Response) -> Response:
    for handle in g.graft_opened:
        handle.close()  # a spooled part that grew into a temporary file lets go of it now, not at garbage collection
    return response
