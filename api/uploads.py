"""Upload endpoints: images (or zip archives of them) stored for predict jobs, in one or several requests.

Each upload folder has an `uploads` row naming its owner and counting what it stores (its bytes plus
ENTRY_BYTES per file and folder: the storage quota); only its owner (or an admin) may add to it or predict from
it. A folder without a row predates owners: admins only. A request is planned whole (every name, every zip's
members and the folders they imply) and checked against the limits and the caller's quota before one byte of it
is written; a request refused later (a zip that lies about its sizes) takes back what it wrote.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO

from flask import Response, jsonify
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage

from graft.api.context import config, db
from graft.api.errors import APIError
from graft.api.forms import SPOOL, Form, read_form
from graft.api.openapi import Blueprint, multipart
from graft.api.owners import may_see, owner_id
from graft.api.quotas import check_storage_quota
from graft.api.schemas import UploadAnswer, UploadForm
from graft.api.validation import form_bool
from graft.shared.archive import ArchiveError, ArchiveLimits, plan_zip_stream
from graft.shared.config import Config
from graft.shared.files import NameClaims, UploadError, safe_relative, stored_cost
from graft.shared.models import Upload, new_id
from graft.shared.uploads import (
    extract_zip, release_upload, remove_claimed, remove_upload, save_stream, spool_dir, upload_dir,
)

bp = Blueprint("uploads", __name__, description="Images stored for predict jobs, in one or several requests.")

ZIP_EXPANSION = 4  # a request's zips may unpack to this many times the request size limit (and the quota's left)


def _spool(_field: str, _filename: str) -> IO[bytes]:
    folder = spool_dir(config().artifacts_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return tempfile.SpooledTemporaryFile(SPOOL, dir=folder)  # noqa: SIM115 - closed with the request


def upload_form() -> Form:
    """This request's multipart form, its file parts spooled on the artifacts disk (which the free-space check
    watches; TMPDIR may be a small or another disk)."""
    return read_form(_spool)


def file_parts() -> list[FileStorage]:
    """The non-empty parts of multipart field 'file'."""
    return [part for part in upload_form().getlist("file") if part.filename or part.content_length]


def upload_parts() -> list[FileStorage]:
    """An upload request's files (400 without one), its fields checked against UploadForm (400 for another)."""
    unknown = sorted(set(upload_form().fields) - set(UploadForm._declared_fields))  # noqa: SLF001 - marshmallow's
    if unknown:
        raise APIError(400, f"unknown field {unknown[0]!r}: an upload takes 'file' and 'extract_zip'", field=unknown[0])
    parts = file_parts()
    if not parts:
        raise APIError(400, "send images as multipart/form-data field 'file'", field="file")
    return parts


def _names(parts: list[FileStorage], unpack: bool) -> tuple[list[str], NameClaims]:
    """Each part's file name, and the loose files' names claimed; a 400 naming 'file' for an unsafe name, one
    sent twice, or one that is also another's folder (`a` and `a/b.jpg`), before anything is written."""
    claims, names = NameClaims(), []
    try:
        for index, part in enumerate(parts):
            name = part.filename or f"file-{index}"
            if not (unpack and name.lower().endswith(".zip")):  # an unpacked zip's members are claimed as written
                claims.claim(safe_relative(name))
            names.append(name)
    except UploadError as exc:
        raise _refused(exc) from None
    return names, claims


def part_size(part: FileStorage) -> int:
    """The bytes of a spooled file part (the stream is rewound)."""
    stream = part.stream
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    return size


def _plan(parts: list[FileStorage], zips: list[bool], claims: NameClaims, cfg: Config) -> tuple[int, int]:
    """(entries, bytes) the request would store: loose files as sent, each zip as planned from its directory.
    400 past GRAFT_ARCHIVE_MAX_MEMBERS files and folders (those a name implies included) or the size limit,
    then 507 past the caller's storage quota: all before a byte is written."""
    allowed = min(cfg.max_body_mb * 1024 * 1024 * ZIP_EXPANSION, cfg.archive_max_bytes)
    entries, size = claims.entries, 0
    for part, is_zip in zip(parts, zips):
        if is_zip:
            limits = ArchiveLimits(max(cfg.archive_max_members - entries, 0), max(allowed - size, 0),
                                   cfg.archive_max_ratio)
            plan = plan_zip_stream(part.stream, limits)
            entries, size = entries + plan.entries, size + plan.bytes
        else:
            size += part_size(part)
    if entries > cfg.archive_max_members:  # loose files alone: a few folders each, up to GRAFT_MAX_FORM_PARTS
        raise ArchiveError(f"the upload makes {entries} files and folders, more than {cfg.archive_max_members} "
                           "(GRAFT_ARCHIVE_MAX_MEMBERS)", "too_many_members")
    check_storage_quota(stored_cost(size, entries))
    return entries, size


def _store_parts(folder: Path, parts: list[FileStorage]) -> tuple[int, int]:
    """Save uploaded parts under folder (a part named *.zip is unpacked unless the form says extract_zip=false);
    returns (files written, what they count against the storage quota).

    The archive limits (GRAFT_ARCHIVE_MAX_MEMBERS, _BYTES, _RATIO) hold for the whole request, as for datasets.
    """
    unpack = form_bool("extract_zip", True)
    cfg = config()
    names, claims = _names(parts, unpack)  # loose files first: a zip member of the same name is then refused
    zips = [unpack and name.lower().endswith(".zip") for name in names]
    try:
        entries, size = _plan(parts, zips, claims, cfg)
    except UploadError as exc:  # an ArchiveError too: its code names the rule
        raise _refused(exc) from None
    budget, written = [size], 0  # what the plan declared: a member that unpacks to more is refused as it is written
    limits = ArchiveLimits(cfg.archive_max_members, cfg.archive_max_bytes, cfg.archive_max_ratio)
    try:
        for part, name, is_zip in zip(parts, names, zips):
            if is_zip:
                written += extract_zip(folder, part.stream, budget, limits, claims).files
            else:
                save_stream(folder, name, part.stream, budget)
                written += 1
    except BaseException as exc:
        remove_claimed(folder, claims)  # nothing of a refused request stays, in a new upload or an earlier one
        if isinstance(exc, UploadError):
            raise _refused(exc) from None
        raise
    return written, stored_cost(size - budget[0], entries)


def _refused(exc: UploadError) -> APIError:
    return APIError(400, f"file: {exc}", field="file", code=exc.code)


def record_upload(upload_id: str, size: int) -> None:
    """Record (and commit) the caller as the owner of a new upload counting size bytes (see stored_cost)."""
    session = db()
    session.add(Upload(id=upload_id, owner_id=owner_id(), size_bytes=size))
    session.commit()


def new_upload(parts: list[FileStorage]) -> tuple[str, int]:
    """Store parts as a new upload owned by the caller; returns (its id, files written). Nothing is kept on error."""
    upload_id = new_id()
    folder = upload_dir(config().artifacts_dir, upload_id)
    folder.mkdir(parents=True)
    try:
        written, size = _store_parts(folder, parts)
        record_upload(upload_id, size)
        return upload_id, written
    except BaseException:
        remove_upload(folder)
        raise


def release(session: Session, job_id: str) -> None:
    """Remove the upload of a predict job that ended at once (the queue was down), with its row."""
    release_upload(session, config().artifacts_dir, job_id)
    session.commit()


@bp.post("/uploads")
@bp.doc(requestBody=multipart(UploadForm))
@bp.response(201, UploadAnswer)
@bp.problems(400, 401, 413, 507)
def create_upload() -> Response:
    """Start an upload with the images (or zip archives) in multipart field 'file'; 201 with its id."""
    upload_id, added = new_upload(upload_parts())
    response = jsonify({"id": upload_id, "added": added})
    response.status_code = 201
    return response


@bp.post("/uploads/<id:upload_id>")
@bp.doc(requestBody=multipart(UploadForm))
@bp.response(200, UploadAnswer)
@bp.problems(400, 401, 404, 413, 507)
def add_to_upload(upload_id: str) -> Response:
    """Add another part of images to an upload (large folders go up in several requests)."""
    folder = upload_folder(upload_id)
    added, size = _store_parts(folder, upload_parts())
    session = db()
    row = session.get(Upload, upload_id)
    if row is not None:  # a legacy upload (no row) has no owner to count it against
        row.size_bytes += size
        session.commit()
    return jsonify({"id": upload_id, "added": added})


def upload_folder(upload_id: str) -> Path:
    """The folder of an existing upload the caller may use, or 404 (someone else's answers as a missing one)."""
    try:
        folder = upload_dir(config().artifacts_dir, upload_id)
    except UploadError:
        folder = None
    if folder is not None:
        row = db().get(Upload, upload_id)
        # No row: the upload predates owners, so only an admin may use it (may_see of a row without owner).
        if not may_see(row if row is not None else Upload(id=upload_id, owner_id=None)):
            folder = None
    if folder is None or not folder.is_dir():
        raise APIError(404, f"no upload with id {upload_id}", field="upload_id")
    return folder
