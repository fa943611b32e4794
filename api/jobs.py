"""Job endpoints: submit a training job; read, list and cancel jobs of any kind; a job's events and log lines."""
from __future__ import annotations

import logging

from flask import Blueprint, jsonify, request, url_for
from sqlalchemy import select

from graft.api.context import config, db
from graft.api.datasets import training_source
from graft.api.enqueue import accepted, enqueue_or_fail
from graft.api.errors import APIError
from graft.api.pagination import page
from graft.api.validation import TRAIN_SCHEMA, check_callback, json_body, validate
from graft.shared import lifecycle
from graft.shared.models import Job, JobLogLine
from graft.shared.serializers import model_ids_for, serialize_event, serialize_job, serialize_log_line

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__)

def _get_job(job_id: str) -> Job:
    job = db().get(Job, job_id)
    if job is None:
        raise APIError(404, f"no job with id {job_id}")
    return job


@bp.post("/jobs/train")
def submit_train():  # noqa: ANN201
    """Validate, record a queued job, enqueue it; 202 with the job and its Location."""
    params = validate(json_body(), TRAIN_SCHEMA)
    check_callback(params, config())
    training_source(params)  # data_dir, or a ready dataset_id resolved to its folder (409 while inspecting)
    session = db()
    job = lifecycle.create_job(session, "train", params)
    session.commit()
    enqueue_or_fail(session, job)
    return accepted(job)


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):  # noqa: ANN201
    """One job."""
    job = _get_job(job_id)
    return jsonify(serialize_job(job, model_ids_for(db(), [job.id]).get(job.id)))


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):  # noqa: ANN201
    """Cancel a queued job at once, or ask a running one to stop at its next batch; 409 when finished."""
    session = db()
    job = _get_job(job_id)
    try:
        lifecycle.request_cancel(session, job)
        session.commit()
    except (lifecycle.IllegalTransition, lifecycle.StaleJob):
        session.rollback()
        job = _get_job(job_id)
        if job.status in lifecycle.FINISHED:
            raise APIError(409, f"job {job_id} is already {job.status}", status_now=job.status) from None
        raise APIError(409, f"job {job_id} changed while cancelling; try again", status_now=job.status) from None
    code = 200 if job.status == lifecycle.CANCELLED else 202
    return jsonify(serialize_job(job, model_ids_for(session, [job.id]).get(job.id))), code


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str):  # noqa: ANN201
    """A job's recorded state transitions, oldest first."""
    job = _get_job(job_id)
    return jsonify({"items": [serialize_event(e) for e in job.events]})


MAX_LOG_LINES = 1000


@bp.get("/jobs/<job_id>/logs")
def job_logs(job_id: str):  # noqa: ANN201
    """The lines the job's workers logged (epochs, warnings, errors), oldest first; ?after=<id> for the next ones."""
    _get_job(job_id)
    try:
        after = int(request.args.get("after", 0))
        limit = int(request.args.get("limit", MAX_LOG_LINES))
    except ValueError:
        raise APIError(400, "after and limit must be integers", field="after") from None
    if not 0 <= after < 2**63 or not 1 <= limit <= MAX_LOG_LINES:
        raise APIError(400, f"after must be >= 0 and limit in 1..{MAX_LOG_LINES}", field="limit")
    rows = db().scalars(select(JobLogLine).where(JobLogLine.job_id == job_id, JobLogLine.id > after)
                        .order_by(JobLogLine.id).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = url_for("jobs.job_logs", job_id=job_id, after=rows[-1].id, limit=limit) if more else None
    return jsonify({"items": [serialize_log_line(r) for r in rows], "next": nxt})


@bp.get("/jobs")
def list_jobs():  # noqa: ANN201
    """Jobs, newest first, optionally filtered by ?status= and ?kind=."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
    filters = {}
    status = request.args.get("status")
    if status:
        if status not in lifecycle.STATUSES:
            raise APIError(400, f"status must be one of {list(lifecycle.STATUSES)}", field="status")
        query, filters["status"] = query.where(Job.status == status), status
    kind = request.args.get("kind")
    if kind:
        if kind not in lifecycle.KINDS:
            raise APIError(400, f"kind must be one of {list(lifecycle.KINDS)}", field="kind")
        query, filters["kind"] = query.where(Job.kind == kind), kind

    def serialize(jobs: list[Job]) -> list[dict]:
        ids = model_ids_for(db(), [j.id for j in jobs])
        return [serialize_job(j, ids.get(j.id)) for j in jobs]

    return page(query, "jobs.list_jobs", serialize, **filters)
