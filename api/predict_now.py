"""Synchronous predict: 1–32 images classified by a worker from the interactive queue, answered within a bound.

The API process never loads a model: it stores the images as an upload, records a small predict job, sends it
to the interactive queue and waits (GRAFT_SYNC_PREDICT_WAIT_SECONDS, 30 s by default) for the job to end.
Past the bound it answers 202 with the job, whose rows are then read from /jobs/<id>/results.
Everything the path and the caller decide (the model, the job quota) is checked before a byte of the body is
read, and the body's files are spooled on the artifacts disk, which the free-space check watches.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flask import Response, current_app, jsonify
from sqlalchemy import select

from graft.api.context import config, db
from graft.api.enqueue import accepted, enqueue_or_fail
from graft.api.errors import APIError
from graft.api.openapi import Blueprint, multipart
from graft.api.owners import owner_id
from graft.api.predict_jobs import get_model_or_404
from graft.api.quotas import check_job_quota, check_storage_quota
from graft.api.schemas import MAX_SYNC_FILES, JobSchema, PredictNowAnswer, PredictNowForm, PredictNowRequest
from graft.api.uploads import file_parts, part_size, record_upload, release, upload_form
from graft.api.validation import form_values, validate
from graft.shared import lifecycle
from graft.shared.files import UploadError, safe_relative, stored_cost
from graft.shared.models import Job, PredictionResult, new_id
from graft.shared.queue import enqueue_predict_now
from graft.shared.serializers import result_row
from graft.shared.uploads import remove_upload, save_stream, upload_dir

bp = Blueprint("predict_now", __name__, description=f"Synchronous prediction of 1–{MAX_SYNC_FILES} images.")
SUMMARY_KEYS = ("files", "labels", "unknown", "errors")


def _stored_name(index: int, name: str) -> str:
    """Where part index is stored: its own folder keeps the order and lets two parts share a file name; 400 for
    a name that is not safe (NUL, '..', too deep or too long), as every upload answers it."""
    try:
        return f"{index:02d}/{safe_relative(name).name}"
    except UploadError as exc:
        raise APIError(400, f"file: {exc}", field="file", code=exc.code) from None


def _wait_finished(job_id: str, seconds: float) -> Job | None:
    """Poll the database (the source of truth) until the job has ended; None past the bound."""
    sessions = current_app.extensions["graft_sessions"]
    deadline, pause = time.monotonic() + seconds, 0.02
    while True:
        with sessions() as session:
            job = session.get(Job, job_id)
            if job is not None and job.status in lifecycle.FINISHED:
                session.expunge(job)
                return job
        if time.monotonic() >= deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def _answer(job: Job, model_id: str) -> dict[str, Any]:
    """The rows of a finished job in the order the images were sent, named as the client named them."""
    if job.status == lifecycle.CANCELLED:
        raise APIError(409, f"prediction job {job.id} was cancelled", job_id=job.id)
    if job.status != lifecycle.SUCCEEDED:
        raise APIError(500, f"prediction failed: {job.error}", job_id=job.id)
    names = job.params["names"]
    rows = db().scalars(select(PredictionResult).where(PredictionResult.job_id == job.id)
                        .order_by(PredictionResult.path)).all()
    items = []
    for row in rows:
        item = result_row(row)
        item["path"] = names[int(row.path.split("/", 1)[0])]
        items.append(item)
    summary = (job.metrics or {}).get("summary", {})
    return {"model_id": model_id, "job_id": job.id, "items": items,
            "summary": {key: summary.get(key) for key in SUMMARY_KEYS}}


@bp.post("/models/<id:model_id>/predict")
@bp.doc(requestBody=multipart(PredictNowForm))
@bp.response(200, PredictNowAnswer, description="classified in time: one row per image, in the order sent")
@bp.alt_response(202, schema=JobSchema, description="past the bound: the job, whose rows come from /results",
                 headers={"Location": {"description": "the job's URL", "schema": {"type": "string"}}})
@bp.problems(400, 401, 404, 409, 413, 500, 503, 507)
def predict_now(model_id: str) -> Response:
    """Classify 1–32 images from multipart field 'file' on an interactive worker; 200, or 202 past the bound."""
    # Before a byte of the body is read (what is not read is not stored): the path's model, then the job quota.
    model = get_model_or_404(model_id)
    check_job_quota()
    if not Path(model.path).is_file():
        raise APIError(404, f"model {model_id} has no artifact on this server", field="model_id")
    params = validate(form_values(upload_form().fields, PredictNowRequest), PredictNowRequest)
    parts = file_parts()
    if not 1 <= len(parts) <= MAX_SYNC_FILES:
        raise APIError(400, f"send 1 to {MAX_SYNC_FILES} images in multipart field 'file' (got {len(parts)})",
                       field="file")
    cfg = config()
    names = [part.filename or f"file-{index}" for index, part in enumerate(parts)]
    stored = [_stored_name(index, name) for index, name in enumerate(names)]
    size = sum(part_size(part) for part in parts)  # spooled: their sizes are known before one is stored
    cost = stored_cost(size, 2 * len(parts))  # each image and its own folder
    check_storage_quota(cost)
    upload_id = new_id()
    folder = upload_dir(cfg.artifacts_dir, upload_id)
    budget = [size]
    try:
        for part, name in zip(parts, stored):
            save_stream(folder, name, part.stream, budget)
        record_upload(upload_id, cost)
    except BaseException as exc:
        remove_upload(folder)
        if isinstance(exc, UploadError):
            raise APIError(400, f"file: {exc}", field="file", code=exc.code) from None
        raise
    session = db()
    job = lifecycle.create_job(session, "predict", {
        "model_id": model.id, "upload_id": upload_id, "top_k": min(params["top_k"], len(model.classes)),
        "threshold": params["threshold"], "target_precision": params["target_precision"],
        "reject_ood": params["reject_ood"], "precision": params["precision"], "runtime": params["runtime"],
        "tta": params["tta"],
        "recursive": True, "chunk_size": MAX_SYNC_FILES, "interactive": True, "names": names,
    }, owner_id())
    session.commit()
    enqueue_or_fail(session, job, enqueue_predict_now, cleanup=lambda: release(session, job.id))
    finished = _wait_finished(job.id, cfg.sync_predict_wait_s)
    if finished is None:
        return accepted(job)
    return jsonify(_answer(finished, model.id))
