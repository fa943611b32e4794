"""Dataset endpoints: upload an archive (or name a server folder), read the inspection report, delete.

The upload is streamed to a file under the datasets folder (never held in memory), checked and extracted
into a staging folder in this request: a hostile archive is refused at once with its 4xx, and a refused
upload leaves nothing behind. The accepted tree moves to datasets/<id>/, gets its row in status
"inspecting", and the inspection (which decodes images) runs on a worker: the dataset then becomes
"ready" or "failed", with its report. Training on a dataset that is not ready is refused with a 409.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import IO, Any

from flask import Response, jsonify, request, url_for
from sqlalchemy import select
from werkzeug.exceptions import RequestEntityTooLarge

from graft.api.context import celery, config, db
from graft.api.errors import APIError
from graft.api.forms import read_form
from graft.api.openapi import Blueprint, json_or_multipart
from graft.api.owners import get_owned, owner_id, visible
from graft.api.pagination import page
from graft.api.quotas import check_storage_quota
from graft.api.schemas import (
    DatasetPage, DatasetPathRequest, DatasetSchema, DatasetUploadFields, DatasetUploadForm, Deleted, PageArgs,
)
from graft.api.validation import json_body, validate
from graft.shared.archive import ArchiveError, ArchiveLimits, extract_archive
from graft.shared.config import Config
from graft.shared.datasets import jobs_using, not_trainable_reason
from graft.shared.files import is_junk_name, is_junk_path, stored_cost
from graft.shared.models import INSPECTING, SERVER_PATH, UPLOAD, DatasetRecord, new_id
from graft.shared.queue import enqueue_inspection
from graft.shared.serializers import serialize_dataset
from graft.shared.storage import PathNotAllowed, resolve_under_roots
from graft.shared.thumbs import dataset_thumbs_dir

log = logging.getLogger(__name__)
bp = Blueprint("datasets", __name__, description="Datasets: upload an archive or name a server folder; reports.")

MB = 1024 * 1024
ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".zip", ".tar")


class _CappedFile(io.FileIO):
    """The uploaded archive on disk; counts bytes as they arrive and stops past the limit."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(path, "w+")
        self.limit, self.received = limit, 0

    def write(self, data: Any) -> int:  # noqa: ANN401 - a buffer
        """Append a block, or raise 413 once the body passes the limit."""
        self.received += len(data)
        if self.received > self.limit:
            raise RequestEntityTooLarge()
        return super().write(data)


def _too_large(cfg: Config) -> APIError:
    return APIError(413, f"request body too large: the limit is {cfg.max_body_mb} MB (GRAFT_MAX_UPLOAD_MB)",
                    limit_mb=cfg.max_body_mb)


def _receive(staging: Path, cfg: Config) -> tuple[Path, str, str | None]:
    """Stream multipart field 'file' into staging; returns (archive path, its file name, the "name" field)."""
    limit = cfg.max_body_mb * MB  # api.admission refused a larger Content-Length; this stops a chunked body
    target = staging / "upload.bin"
    opened: list[_CappedFile] = []

    def open_file(_field: str, _filename: str) -> IO[bytes]:
        if opened:
            raise APIError(400, "send exactly one archive in multipart field 'file'", field="file")
        opened.append(_CappedFile(target, limit))
        return opened[0]

    try:
        form = read_form(open_file)
    except RequestEntityTooLarge:
        raise _too_large(cfg) from None
    finally:
        for handle in opened:
            handle.close()
    parts = form.getlist("file")
    if not parts or not target.is_file():
        raise APIError(400, "send the archive (zip or tar) as multipart/form-data field 'file'", field="file")
    return target, parts[0].filename or "dataset", validate(form.fields, DatasetUploadFields)["name"]


def _dataset_root(tree: Path) -> Path:
    """Step into a lone wrapper folder (a zipped "myset/" holding the class folders)."""
    root = tree
    while True:
        entries = [p for p in root.iterdir() if not is_junk_name(p.name)]
        if len(entries) != 1 or not entries[0].is_dir():
            return root
        inner = entries[0]
        if not any(p.is_dir() and not is_junk_name(p.name) for p in inner.iterdir()):
            return root  # a single class folder, not a wrapper
        root = inner


def _display_name(filename: str) -> str:
    base = PurePosixPath(filename.replace("\\", "/").replace("\x00", "")).name  # no NUL reaches the database
    for suffix in ARCHIVE_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)] or base
    return base


def _record(dataset_id: str, name: str, source: str, path: Path, size: int, non_utf8: list[str]) -> DatasetRecord:
    """Record the accepted dataset as inspecting and send its inspection to a worker (503 if Redis is down)."""
    # The inspection reports the archive's non-UTF-8 names: they travel in the report until it is written.
    dataset = DatasetRecord(id=dataset_id, name=name[:255], source=source, path=str(path), status=INSPECTING,
                            size_bytes=size, report={"non_utf8": non_utf8}, owner_id=owner_id())
    session = db()
    session.add(dataset)
    session.commit()
    try:
        enqueue_inspection(celery(), dataset_id)
    except Exception:  # noqa: BLE001 - broker down: forget the dataset rather than leave it inspecting forever
        log.exception("could not enqueue the inspection of dataset %s", dataset_id)
        session.delete(dataset)
        session.commit()
        raise APIError(503, "the job queue (Redis) is unavailable; the dataset was not kept, try again") from None
    log.info("dataset %s (%s) accepted, inspection queued", dataset_id, name)
    return dataset


def _from_upload(cfg: Config) -> DatasetRecord:
    dataset_id = new_id()
    staging = cfg.datasets_dir / ".staging" / dataset_id
    final = cfg.datasets_dir / dataset_id
    staging.mkdir(parents=True)
    stored = False
    try:
        archive, filename, name = _receive(staging, cfg)
        limits = ArchiveLimits(cfg.archive_max_members, cfg.archive_max_bytes, cfg.archive_max_ratio)
        try:
            # Unpacked, it may need far more than the body checked before: the plan (every member's size, every
            # file and folder, those a name implies included) meets the quota before a byte is written.
            extracted = extract_archive(archive, staging / "tree", limits, skip=lambda n: is_junk_path(n.parts),
                                        admit=lambda plan: check_storage_quota(stored_cost(plan.bytes, plan.entries)))
        except ArchiveError as exc:
            raise APIError(400, f"file: {exc}", field="file", code=exc.code) from None
        archive.unlink()
        root = _dataset_root(staging / "tree")
        os.replace(root, final)
        dataset = _record(dataset_id, name or _display_name(filename), UPLOAD, final,
                          stored_cost(extracted.bytes, extracted.entries), extracted.non_utf8)
        stored = True
        return dataset
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not stored:
            shutil.rmtree(final, ignore_errors=True)


def _from_path(cfg: Config, body: dict[str, Any]) -> DatasetRecord:
    params = validate(body, DatasetPathRequest)
    try:
        root = resolve_under_roots(params["path"], cfg.data_roots)
    except PathNotAllowed as exc:
        raise APIError(400, f"path: {exc}", field="path") from None
    return _record(new_id(), params["name"] or root.name, SERVER_PATH, root, 0, [])


@bp.post("/datasets")
@bp.doc(requestBody=json_or_multipart(DatasetPathRequest, DatasetUploadForm))
@bp.response(202, DatasetSchema, description="accepted: status inspecting until a worker has read every image",
             headers={"Location": {"description": "the dataset's URL", "schema": {"type": "string"}}})
@bp.problems(400, 401, 413, 415, 503, 507)
def create_dataset() -> Response:
    """Upload a zip or tar(.gz) as multipart field 'file', or JSON {"path"}; 202 with the dataset, inspecting."""
    cfg = config()
    if request.mimetype == "application/json":
        dataset = _from_path(cfg, json_body())
    elif request.mimetype == "multipart/form-data":
        dataset = _from_upload(cfg)
    else:
        raise APIError(415, "send an archive as multipart/form-data field 'file', or JSON {\"path\": ...}")
    response = jsonify(serialize_dataset(dataset))
    response.status_code = 202
    response.headers["Location"] = url_for("datasets.get_dataset", dataset_id=dataset.id)
    return response


def get_dataset_or_404(dataset_id: str) -> DatasetRecord:
    """The caller's dataset, or 404 (another user's answers as a missing one)."""
    return get_owned(DatasetRecord, dataset_id, "dataset", field="dataset_id")


@bp.get("/datasets")
@bp.arguments(PageArgs, location="query")
@bp.response(200, DatasetPage)
@bp.problems(401)
def list_datasets(args: dict[str, Any]) -> Response:
    """The caller's datasets (an admin's: everyone's), newest first, without per-file details."""
    query = visible(select(DatasetRecord), DatasetRecord).order_by(DatasetRecord.created_at.desc(),
                                                                   DatasetRecord.id.desc())
    return page(query, "datasets.list_datasets", lambda rows: [serialize_dataset(d, full=False) for d in rows], args)


@bp.get("/datasets/<id:dataset_id>")
@bp.response(200, DatasetSchema)
@bp.problems(401, 404)
def get_dataset(dataset_id: str) -> Response:
    """One dataset with its full report."""
    return jsonify(serialize_dataset(get_dataset_or_404(dataset_id)))


@bp.delete("/datasets/<id:dataset_id>")
@bp.response(200, Deleted)
@bp.problems(401, 404, 409)
def delete_dataset(dataset_id: str) -> Response:
    """Delete a dataset (and the uploaded files; a server folder is left alone); 409 while a job uses it."""
    session = db()
    dataset = get_dataset_or_404(dataset_id)
    dataset_id = dataset.id  # the full id, also when the path gave a prefix
    users = jobs_using(session, dataset_id)
    if users:
        raise APIError(409, f"dataset {dataset_id} is used by {len(users)} queued or running job(s)", jobs=users)
    session.delete(dataset)
    session.commit()
    folder = Path(dataset.path)
    if dataset.source == UPLOAD and folder.parent.resolve() == config().datasets_dir.resolve():
        shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(dataset_thumbs_dir(config().artifacts_dir, dataset.id), ignore_errors=True)
    return jsonify({"id": dataset_id, "deleted": True})


def training_source(params: dict[str, Any]) -> DatasetRecord | None:
    """Turn a train request's data_dir or dataset_id (exactly one) into params["data_dir"]; 409 unless ready."""
    given = [k for k in ("data_dir", "dataset_id") if params.get(k) is not None]
    if len(given) != 1:
        raise APIError(400, "give exactly one of data_dir or dataset_id", field=given[-1] if given else "data_dir")
    if given == ["dataset_id"]:
        dataset = get_dataset_or_404(params["dataset_id"])
        params["dataset_id"] = dataset.id  # the full id, also when the request gave a prefix
        reason = not_trainable_reason(dataset)
        if reason is not None:
            raise APIError(409, reason, field="dataset_id", dataset_status=dataset.status)
        params["data_dir"] = dataset.path
        return dataset
    params.pop("dataset_id", None)
    try:
        params["data_dir"] = str(resolve_under_roots(params["data_dir"], config().data_roots))
    except PathNotAllowed as exc:
        raise APIError(400, f"data_dir: {exc}", field="data_dir") from None
    return None
