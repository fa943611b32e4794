"""Model endpoints: list trained models, read one, download one in a portable format, delete one."""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import redis
from flask import Response, jsonify, send_file, url_for
from sqlalchemy import select

from graft.api.context import celery, config, db
from graft.api.errors import APIError
from graft.api.openapi import Blueprint
from graft.api.owners import get_owned, principal, visible
from graft.api.pagination import page
from graft.api.quotas import check_storage_quota
from graft.api.schemas import Deleted, DownloadArgs, Exporting, ModelListArgs, ModelPage, ModelSchema
from graft.shared import export_builds
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


def _accepted(model_id: str, fmt: str, state: str) -> Response:
    """202: the export is queued or building; the same URL (Location) answers the zip once it is built."""
    url = url_for("models.download_model", model_id=model_id, format=fmt)
    response = jsonify({"status": state, "model_id": model_id, "format": fmt, "url": url,
                        "retry_after_s": EXPORT_RETRY_AFTER_S})
    response.status_code = 202
    response.headers.update({"Retry-After": str(EXPORT_RETRY_AFTER_S), "Location": url})
    return response


def _failure(model_id: str, fmt: str, error_path: Path) -> APIError | None:
    """The recorded failure of the last build while it is held (FAILED_HOLD_S); a stale one is removed."""
    try:
        age = time.time() - error_path.stat().st_mtime
        reason = error_path.read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    if age >= export_builds.FAILED_HOLD_S:
        error_path.unlink(missing_ok=True)  # the next build may succeed (a worker lost its memory, a fixed bug)
        return None
    again = max(1, int(export_builds.FAILED_HOLD_S - age))
    return APIError(500, f"exporting model {model_id} as {fmt} failed: {reason}; the next request after {again} s "
                         "builds it again", headers={"Retry-After": str(again)}, format=fmt, code="export_failed")


def _start_build(model: TrainedModel, fmt: str, zip_path: Path) -> str | None:
    """Record and send one build of the export, or join the one already recorded: its state (None: built now)."""
    cfg, who = config(), principal()
    client = export_builds.connect(cfg.redis_url)
    state = export_builds.state(client, cfg.queue, model.id, fmt)
    if state:
        return state
    if zip_path.is_file():  # written between the caller's look and ours (the zip is written before the record goes)
        return None
    artifact = Path(model.path)
    if not artifact.is_file():
        raise APIError(404, f"model {model.id} has no artifact on this server", field="model_id")
    # An export holds the same weights as the artifact: its size is the estimate checked against the quota (the
    # worker then adds the zip's real size to the model's, which is what the owner's storage counts).
    check_storage_quota(artifact.stat().st_size)
    requester = who.user_id or "admin"
    limit = cfg.export_builds_per_user if who.user_id else 0  # admins without a user row have no quota
    try:
        if not export_builds.start(client, cfg.queue, model.id, fmt, requester, limit):
            return export_builds.state(client, cfg.queue, model.id, fmt) or export_builds.BUILDING
    except export_builds.TooManyBuilds as exc:
        raise APIError(429, f"export limit reached: you have {exc.held} model export(s) queued or building and may "
                            f"have {exc.limit}; download one of them first, then ask again",
                       headers={"Retry-After": str(EXPORT_RETRY_AFTER_S)}, code="too_many_exports",
                       exports=exc.held, max_exports=exc.limit) from None
    try:
        enqueue_export(celery(), model.id, fmt)
    except Exception:  # noqa: BLE001 - broker down: forget the record, so the next request sends it again
        log.exception("could not enqueue the %s export of model %s", fmt, model.id)
        with contextlib.suppress(redis.RedisError):
            export_builds.abandon(client, cfg.queue, model.id, fmt, requester)
        raise APIError(503, "the job queue (Redis) is unavailable") from None
    log.info("model %s: %s export queued for %s", model.id, fmt, who.name)
    return export_builds.QUEUED


@bp.get("/models/<id:model_id>/download")
@bp.arguments(DownloadArgs, location="query")
@bp.response(200, {"type": "string", "format": "binary"}, content_type="application/zip",
             description="the model, its labels, preprocessing, metrics and a README, zipped")
@bp.alt_response(202, schema=Exporting, description="not built yet: a worker builds it once; ask the same URL "
                 "(Location) again after Retry-After seconds",
                 headers={"Retry-After": {"description": "seconds", "schema": {"type": "integer"}},
                          "Location": {"description": "the URL to ask again", "schema": {"type": "string"}}})
@bp.problems(401, 404, 429, 500, 503, 507)
def download_model(args: dict[str, Any], model_id: str) -> Response:
    """The model as a zip in ?format=, streamed from disk once built; before that 202 at once (one build is queued)."""
    model = get_owned(TrainedModel, model_id, "model")
    fmt = args["format"]
    cfg = config()
    zip_path = export_zip(cfg.artifacts_dir, model.id, fmt)
    if not zip_path.is_file():
        failure = _failure(model.id, fmt, export_error(cfg.artifacts_dir, model.id, fmt))
        if failure is not None:
            raise failure
        try:
            state = _start_build(model, fmt, zip_path)
        except redis.RedisError:
            log.exception("could not record the %s export of model %s", fmt, model.id)
            raise APIError(503, "the job queue (Redis) is unavailable") from None
        if state is not None:
            return _accepted(model.id, fmt, state)
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
