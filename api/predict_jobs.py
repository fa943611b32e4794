"""Batch predict submission: a model and a server folder, an upload, or files sent with the request."""
from __future__ import annotations

from typing import Any

from flask import Response, request
from werkzeug.datastructures import FileStorage

from graft.api.context import config, db
from graft.api.enqueue import accepted, enqueue_or_fail
from graft.api.errors import APIError
from graft.api.forms import read_form
from graft.api.openapi import Blueprint, json_or_multipart
from graft.api.owners import get_owned, owner_id
from graft.api.quotas import check_job_quota
from graft.api.schemas import JobSchema, PredictForm, PredictRequest
from graft.api.uploads import file_parts, new_upload, release, upload_folder
from graft.api.validation import check_callback, form_values, json_body, validate
from graft.shared import lifecycle
from graft.shared.models import TrainedModel
from graft.shared.queue import enqueue_predict
from graft.shared.storage import PathNotAllowed, resolve_under_roots

bp = Blueprint("predict_jobs", __name__, description="Batch prediction jobs: a server folder, an upload or files.")


def get_model_or_404(model_id: str) -> TrainedModel:
    """The caller's model, or 404."""
    return get_owned(TrainedModel, model_id, "model", field="model_id")


def _predict_params() -> tuple[dict[str, Any], list[FileStorage]]:
    if request.mimetype == "multipart/form-data":
        fields = {k: v for k, v in read_form().fields.items() if k != "extract_zip"}
        return validate(form_values(fields, PredictRequest), PredictRequest), file_parts()
    return validate(json_body(), PredictRequest), []


@bp.post("/jobs/predict")
@bp.doc(requestBody=json_or_multipart(PredictRequest, PredictForm))
@bp.response(202, JobSchema, headers={"Location": {"description": "the job's URL", "schema": {"type": "string"}}})
@bp.problems(400, 401, 404, 413, 503, 507)
def submit_predict() -> Response:
    """Validate, record a queued predict job, enqueue it; 202 with the job and its Location (429 past the job quota)."""
    check_job_quota()  # before the body is read: a refused request stores nothing
    params, parts = _predict_params()
    check_callback(params, config())
    model = get_model_or_404(params["model_id"])
    params["model_id"] = model.id  # the full id, also when the request gave a prefix
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
            params["upload_id"], _ = new_upload(parts)
        else:
            upload_folder(params["upload_id"])
    session = db()
    job = lifecycle.create_job(session, "predict", params, owner_id())
    session.commit()
    enqueue_or_fail(session, job, enqueue_predict, cleanup=lambda: release(session, job.id))
    return accepted(job)
