"""Predict endpoints: uploads, batch predict jobs (server folder, upload or zip), their results, and 1–32 images now."""
from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage

from api.db import config, db
from api.jobs import accepted, enqueue_or_fail
from api.errors import APIError
from api.validation import PREDICT_SCHEMA, form_values, json_body, validate
from shared import jobs as sm
from shared.models import Job, TrainedModel, new_id
from shared.queue import enqueue_predict
from shared.results import PredictionResult, result_row
from shared.storage import PathNotAllowed, resolve_under_roots
from shared.uploads import UploadError, extract_zip, release_upload, remove_upload, save_stream, upload_dir

log = logging.getLogger(__name__)
bp = Blueprint("predict", __name__)

MAX_SYNC_FILES = 32
RESULTS_PAGE, RESULTS_MAX_PAGE, CSV_BATCH = 100, 1000, 1000
ZIP_EXPANSION = 4  # an archive may unpack to this many times the request size limit
SYNC_SCHEMA = {name: PREDICT_SCHEMA[name] for name in ("top_k", "threshold", "precision", "runtime")}
CSV_COLUMNS = ["path", "label", "confidence", "error"]


def _model(model_id: str) -> TrainedModel:
    model = db().get(TrainedModel, model_id)
    if model is None:
        raise APIError(404, f"no model with id {model_id}", field="model_id")
    return model


def _parts() -> list[FileStorage]:
    return [part for part in request.files.getlist("file") if part.filename or part.content_length]


def _store_parts(folder: Path, parts: list[FileStorage]) -> int:
    """Save uploaded parts under folder; a part named *.zip is unpacked unless the form says extract_zip=false."""
    unpack = request.form.get("extract_zip", "true").strip().lower() not in ("false", "0", "no")
    budget = [config().max_body_mb * 1024 * 1024 * ZIP_EXPANSION]
    written = 0
    try:
        for part in parts:
            name = part.filename or f"file-{written}"
            if unpack and name.lower().endswith(".zip"):
                written += extract_zip(folder, part.stream, budget)
            else:
                save_stream(folder, name, part.stream, budget)
                written += 1
    except UploadError as exc:
        raise APIError(400, f"file: {exc}", field="file") from None
    return written


def _new_upload(parts: list[FileStorage]) -> tuple[str, int]:
    upload_id = new_id()
    folder = upload_dir(config().artifacts_dir, upload_id)
    folder.mkdir(parents=True)
    try:
        return upload_id, _store_parts(folder, parts)
    except BaseException:
        remove_upload(folder)
        raise


@bp.post("/uploads")
def create_upload():  # noqa: ANN201
    """Start an upload with the images (or zip archives) in multipart field 'file'; 201 with its id."""
    parts = _parts()
    if not parts:
        raise APIError(400, "send images as multipart/form-data field 'file'", field="file")
    upload_id, added = _new_upload(parts)
    return jsonify({"id": upload_id, "added": added}), 201


@bp.post("/uploads/<upload_id>")
def add_to_upload(upload_id: str):  # noqa: ANN201
    """Add another part of images to an upload (large folders go up in several requests)."""
    folder = _upload_folder(upload_id)
    parts = _parts()
    if not parts:
        raise APIError(400, "send images as multipart/form-data field 'file'", field="file")
    return jsonify({"id": upload_id, "added": _store_parts(folder, parts)})


def _upload_folder(upload_id: str) -> Path:
    try:
        folder = upload_dir(config().artifacts_dir, upload_id)
    except UploadError:
        folder = None
    if folder is None or not folder.is_dir():
        raise APIError(404, f"no upload with id {upload_id}", field="upload_id")
    return folder


def _predict_params() -> tuple[dict[str, Any], list[FileStorage]]:
    if request.mimetype == "multipart/form-data":
        fields = {k: v for k, v in request.form.to_dict().items() if k != "extract_zip"}
        return validate(form_values(fields, PREDICT_SCHEMA), PREDICT_SCHEMA), _parts()
    return validate(json_body(), PREDICT_SCHEMA), []


@bp.post("/jobs/predict")
def submit_predict():  # noqa: ANN201
    """Validate, record a queued predict job, enqueue it; 202 with the job and its Location."""
    params, parts = _predict_params()
    model = _model(params["model_id"])
    params["top_k"] = min(params["top_k"], len(model.classes))
    sources = [k for k in ("input_dir", "upload_id") if params[k] is not None] + (["file"] if parts else [])
    if len(sources) != 1:
        raise APIError(400, "give exactly one of input_dir, upload_id or uploaded files (multipart field 'file')",
                       field=sources[-1] if sources else "input_dir")
    if params["input_dir"] is not None:
        try:
            params["input_dir"] = str(resolve_under_roots(params["input_dir"], config().data_roots))
        except PathNotAllowed as exc:
            raise APIError(400, f"input_dir: {exc}", field="input_dir") from None
        del params["upload_id"]
    else:
        del params["input_dir"]
        if parts:
            params["upload_id"], _ = _new_upload(parts)
        else:
            _upload_folder(params["upload_id"])
    session = db()
    job = sm.create_job(session, "predict", params)
    session.commit()
    enqueue_or_fail(session, job, enqueue_predict, cleanup=lambda: release_upload(session, config().artifacts_dir, job.id))
    return accepted(job)


def _finished_predict_job(job_id: str) -> Job:
    job = db().get(Job, job_id)
    if job is None:
        raise APIError(404, f"no job with id {job_id}")
    if job.kind != "predict":
        raise APIError(400, f"job {job_id} is a {job.kind} job; only predict jobs have results")
    if job.status != sm.SUCCEEDED:
        raise APIError(409, f"job {job_id} is {job.status}; results are available once it has succeeded",
                       job_status=job.status, job_error=job.error)
    return job


def _results_query(job_id: str, after: str | None, limit: int):  # noqa: ANN202 - a Select
    query = select(PredictionResult).where(PredictionResult.job_id == job_id).order_by(PredictionResult.path)
    if after is not None:
        query = query.where(PredictionResult.path > after)
    return query.limit(limit)


@bp.get("/jobs/<job_id>/results")
def job_results(job_id: str):  # noqa: ANN201
    """One row per file, sorted by path: JSON pages ({"items", "summary", "next"}) or ?format=csv (streamed)."""
    job = _finished_predict_job(job_id)
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise APIError(400, "format must be json or csv", field="format")
    if fmt == "csv":
        return _csv_response(job)
    try:
        limit = int(request.args.get("limit", RESULTS_PAGE))
    except ValueError:
        raise APIError(400, "limit must be an integer", field="limit") from None
    if not 1 <= limit <= RESULTS_MAX_PAGE:
        raise APIError(400, f"limit must be in 1..{RESULTS_MAX_PAGE}", field="limit")
    after = request.args.get("after")
    rows = db().scalars(_results_query(job.id, after, limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = url_for("predict.job_results", job_id=job.id, limit=limit, after=rows[-1].path) if more else None
    summary = (job.metrics or {}).get("summary", {})
    return jsonify({"job_id": job.id, "items": [result_row(r) for r in rows], "summary": summary, "next": nxt})


def _csv_rows(session: Session, job_id: str, with_top_k: bool) -> Iterator[str]:
    """CSV text in batches, keyset-paged by path; closes session when done."""
    try:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS + (["top_k"] if with_top_k else []))
        after = None
        while True:
            rows = session.scalars(_results_query(job_id, after, CSV_BATCH)).all()
            for r in rows:
                line = [r.path, r.label or "", "" if r.confidence is None else r.confidence, r.error or ""]
                writer.writerow(line + ([_json(r.top_k or [])] if with_top_k else []))
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(rows) < CSV_BATCH:
                return
            after = rows[-1].path
            session.expunge_all()
    finally:
        session.close()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _csv_response(job: Job) -> Response:
    session = current_app.extensions["graft_sessions"]()
    with_top_k = int(job.params.get("top_k", 1)) > 1
    headers = {"Content-Disposition": f'attachment; filename="predictions-{job.id}.csv"'}
    return Response(_csv_rows(session, job.id, with_top_k), mimetype="text/csv", headers=headers)


@bp.post("/models/<model_id>/predict")
def predict_now(model_id: str):  # noqa: ANN201
    """Classify 1–32 images from multipart field 'file' synchronously, in the API process."""
    model = _model(model_id)
    parts = _parts()
    if not 1 <= len(parts) <= MAX_SYNC_FILES:
        raise APIError(400, f"send 1 to {MAX_SYNC_FILES} images in multipart field 'file' (got {len(parts)})",
                       field="file")
    params = validate(form_values(request.form.to_dict(), SYNC_SCHEMA), SYNC_SCHEMA)
    # torch is imported only here, on first use: the rest of the API never needs it.
    from worker.core.model_cache import default_cache
    from worker.core.predict import summarize

    try:
        predictor = default_cache().get(model.path, params["precision"], params["runtime"],
                                        max_pixels=config().max_image_pixels)
    except FileNotFoundError:
        raise APIError(404, f"model {model_id} has no artifact on this server", field="model_id") from None
    budget = [config().max_body_mb * 1024 * 1024]
    with tempfile.TemporaryDirectory(prefix="graft-predict-") as tmp:
        files = []
        for index, part in enumerate(parts):
            save_stream(Path(tmp), f"{index:02d}", part.stream, budget)
            files.append((part.filename or f"file-{index}", Path(tmp) / f"{index:02d}"))
        rows = predictor.predict_files(files, params["top_k"], params["threshold"])
    return jsonify({"model_id": model.id, "items": rows, "summary": summarize(rows)})
