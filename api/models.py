"""Model endpoints: list trained models, read one, download one in a portable format, delete one."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from flask import Response, jsonify, send_file
from sqlalchemy import select

from graft.api.context import celery, config, db
from graft.api.errors import APIError
from graft.api.openapi import Blueprint
from graft.api.owners import get_owned, visible
from graft.api.pagination import page
from graft.api.schemas import Deleted, DownloadArgs, Exporting, ModelListArgs, ModelPage, ModelSchema
from graft.shared.datasets import ACTIVE
from graft.shared.exports import download_name, export_error, export_zip
from graft.shared.models import Job, TrainedModel
from graft.shared.queue import enqueue_export
from graft.shared.serializers import serialize_model
from graft.shared.storage import model_dir

log = logging.getLogger(__name__)
bp = Blueprint("models", __name__, description="Trained models: list, read, download as a portable zip, delete.")

EXPORT_RETRY_AFTER_S = 5


@bp.get("/models")
@bp.arguments(ModelListArgs, location="query")
@bp.response(200, ModelPage)
@bp.problems(401)
def list_models(args: dict[str, Any]) -> Response:
    """The caller's models (an admin's: everyone's), newest first, optionally ?job_id=."""
    query = visible(select(TrainedModel), TrainedModel).order_by(TrainedModel.created_at.desc(),
                                                                 TrainedModel.id.desc())
    filters = {}
    if args.get("job_id"):
        query, filters["job_id"] = query.where(TrainedModel.job_id == args["job_id"]), args["job_id"]
    return page(query, "models.list_models", lambda rows: [serialize_model(m) for m in rows], args, **filters)


@bp.get("/models/<id:model_id>")
@bp.response(200, ModelSchema)
@bp.problems(401, 404)
def get_model(model_id: str) -> Response:
    """One model."""
    return jsonify(serialize_model(get_owned(TrainedModel, model_id, "model")))


def _wait_export(zip_path: Path, error_path: Path, seconds: float) -> str | None:
    """Poll the exports folder until the worker wrote the zip ("done") or its error ("error"); None past the bound."""
    deadline, pause = time.monotonic() + seconds, 0.02
    while True:
        if zip_path.is_file():
            return "done"
        if error_path.is_file():
            return "error"
        if time.monotonic() >= deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


@bp.get("/models/<id:model_id>/download")
@bp.arguments(DownloadArgs, location="query")
@bp.response(200, {"type": "string", "format": "binary"}, content_type="application/zip",
             description="the model, its labels, preprocessing, metrics and a README, zipped")
@bp.alt_response(202, schema=Exporting, description="still being built: ask again after Retry-After seconds",
                 headers={"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}})
@bp.problems(401, 404, 500, 503)
def download_model(args: dict[str, Any], model_id: str) -> Response:
    """The model as a zip in ?format= (built once by an interactive worker, then sent from disk); 202 past the bound."""
    model = get_owned(TrainedModel, model_id, "model")
    fmt = args["format"]
    cfg = config()
    zip_path, error_path = export_zip(cfg.artifacts_dir, model.id, fmt), export_error(cfg.artifacts_dir, model.id, fmt)
    if not zip_path.is_file():
        if not Path(model.path).is_file():
            raise APIError(404, f"model {model_id} has no artifact on this server", field="model_id")
        # Each request without a zip is a new attempt: a duplicate is harmless (the worker skips a built zip,
        # and racing builds each replace the file atomically).
        error_path.unlink(missing_ok=True)
        try:
            enqueue_export(celery(), model.id, fmt)
        except Exception:  # noqa: BLE001 - broker down: nothing was recorded, say so
            log.exception("could not enqueue the %s export of model %s", fmt, model.id)
            raise APIError(503, "the job queue (Redis) is unavailable") from None
        outcome = _wait_export(zip_path, error_path, cfg.sync_predict_wait_s)
        if outcome is None:
            response = jsonify({"status": "exporting", "model_id": model.id, "format": fmt,
                                "retry_after_s": EXPORT_RETRY_AFTER_S})
            response.status_code, response.headers["Retry-After"] = 202, str(EXPORT_RETRY_AFTER_S)
            return response
        if outcome == "error":
            try:
                reason = error_path.read_text(errors="replace").strip()
            except FileNotFoundError:  # a newer request removed it to try again
                reason = "see the worker's log"
            raise APIError(500, f"exporting model {model.id} as {fmt} failed: {reason}", format=fmt)
    return send_file(zip_path, mimetype="application/zip", as_attachment=True,
                     download_name=download_name(model.id, fmt), max_age=0)


@bp.delete("/models/<id:model_id>")
@bp.response(200, Deleted)
@bp.problems(401, 404, 409)
def delete_model(model_id: str) -> Response:
    """Delete a model's row and its folder (weights, exports); 409 while a queued or running predict job uses it."""
    session = db()
    model = get_owned(TrainedModel, model_id, "model")
    model_id = model.id  # the full id, also when the path gave a prefix
    rows = session.execute(select(Job.id, Job.params).where(Job.kind == "predict", Job.status.in_(ACTIVE)))
    users = [job_id for job_id, params in rows if (params or {}).get("model_id") == model_id]
    if users:
        raise APIError(409, f"model {model_id} is used by {len(users)} queued or running predict job(s)", jobs=users)
    # the folder is named by the row's own id under artifacts/models/, never by a path from the request
    folder = model_dir(config().artifacts_dir, model.id)
    session.delete(model)
    session.commit()
    shutil.rmtree(folder, ignore_errors=True)
    return jsonify({"id": model_id, "deleted": True})
