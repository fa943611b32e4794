"""Upload endpoints: images (or zip archives of them) stored for predict jobs, in one or several requests.

Each upload folder has an `uploads` row naming its owner and counting its bytes (the storage quota); only its
owner (or an admin) may add to it or predict from it. A folder without a row predates owners: admins only.
"""
from __future__ import annotations

from pathlib import Path

from flask import Response, jsonify
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage

from graft.api.context import config, db
from graft.api.errors import APIError
from graft.api.forms import read_form
from graft.api.openapi import Blueprint, multipart
from graft.api.owners import may_see, owner_id
from graft.api.schemas import UploadAnswer, UploadForm
from graft.api.validation import form_bool
from graft.shared.archive import ArchiveError, ArchiveLimits
from graft.shared.files import NameClaims, UploadError, safe_relative
from graft.shared.models import Upload, new_id
from graft.shared.uploads import extract_zip, release_upload, remove_upload, save_stream, upload_dir

bp = Blueprint("uploads", __name__, description="Images stored for predict jobs, in one or several requests.")

ZIP_EXPANSION = 4  # an archive may unpack to this many times the request size limit


def file_parts() -> list[FileStorage]:
    """The non-empty parts of multipart field 'file'."""
    return [part for part in read_form().getlist("file") if part.filename or part.content_length]


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
        raise APIError(400, f"file: {exc}", field="file") from None
    return names, claims


def _store_parts(folder: Path, parts: list[FileStorage]) -> tuple[int, int]:
    """Save uploaded parts under folder (a part named *.zip is unpacked unless the form says extract_zip=false);
    returns (files, bytes) written.

    The archive limits (GRAFT_ARCHIVE_MAX_MEMBERS, _BYTES, _RATIO) hold for the whole request, as for datasets.
    """
    unpack = form_bool("extract_zip", True)
    cfg = config()
    names, claims = _names(parts, unpack)  # loose files first: a zip member of the same name is then refused
    allowed = min(cfg.max_body_mb * 1024 * 1024 * ZIP_EXPANSION, cfg.archive_max_bytes)
    budget = [allowed]
    written = 0
    try:
        for part, name in zip(parts, names):
            if unpack and name.lower().endswith(".zip"):
                left = cfg.archive_max_members - written
                limits = ArchiveLimits(left, cfg.archive_max_bytes, cfg.archive_max_ratio)
                written += extract_zip(folder, part.stream, budget, limits, claims).files
            else:
                save_stream(folder, name, part.stream, budget)
                written += 1
    except ArchiveError as exc:
        raise APIError(400, f"file: {exc}", field="file", code=exc.code) from None
    except UploadError as exc:
        raise APIError(400, f"file: {exc}", field="file") from None
    return written, allowed - budget[0]


def record_upload(upload_id: str, size: int) -> None:
    """Record (and commit) the caller as the owner of a new upload of size bytes."""
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
    parts = file_parts()
    if not parts:
        raise APIError(400, "send images as multipart/form-data field 'file'", field="file")
    upload_id, added = new_upload(parts)
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
    parts = file_parts()
    if not parts:
        raise APIError(400, "send images as multipart/form-data field 'file'", field="file")
    added, size = _store_parts(folder, parts)
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
