"""Job endpoints: submit a training job, read one, list them."""
from __future__ import annotations

import logging
from typing import Callable

from celery import Celery
from flask import Blueprint, Response, jsonify, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.datasets import failed_dataset_message, training_source
from api.db import celery, db
from api.errors import APIError
from api.pagination import page
from api.validation import TRAIN_SCHEMA, json_body, validate
from shared import jobs as sm
from shared.models import Job
from shared.queue import enqueue_train

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
    dataset = training_source(params)  # data_dir, or dataset_id resolved to its folder
    session = db()
    job = sm.create_job(session, "train", params)
    session.commit()
    if dataset is not None and dataset.has_errors:  # recorded, then failed at once: no worker time spent
        error = failed_dataset_message(dataset)
        sm.transition(session, job, sm.FAILED, message=error, error=error)
        session.commit()
    else:
        enqueue_or_fail(session, job)
    return accepted(job)


def enqueue_or_fail(session: Session, job: Job, send: Callable[[Celery, str], None] = enqueue_train,
                    cleanup: Callable[[], None] | None = None) -> None:
    """Send the job to the queue; with the broker down, record it as failed (then cleanup) and answer 503."""
    try:
        send(celery(), job.id)
    except Exception as exc:  # noqa: BLE001 - broker down: the job is recorded, then marked failed
        log.exception("could not enqueue job %s", job.id)
        sm.transition(session, job, sm.FAILED, message="queue unavailable", error=f"queue unavailable: {exc}")
        session.commit()
        if cleanup is not None:
            cleanup()
        raise APIError(503, "the job queue (Redis) is unavailable; the job was recorded as failed", job_id=job.id) from None


def accepted(job: Job) -> Response:
    """202 with the job and its Location."""
    response = jsonify(sm.serialize_job(job))
    response.status_code = 202
    response.headers["Location"] = url_for("jobs.get_job", job_id=job.id)
    return response


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):  # noqa: ANN201
    """One job."""
    job = _get_job(job_id)
    return jsonify(sm.serialize_job(job, sm.model_ids_for(db(), [job.id]).get(job.id)))


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):  # noqa: ANN201
    """Cancel a queued job at once, or ask a running one to stop at its next batch; 409 when finished."""
    session = db()
    job = _get_job(job_id)
    try:
        sm.request_cancel(session, job)
        session.commit()
    except (sm.IllegalTransition, sm.StaleJob):
        session.rollback()
        job = _get_job(job_id)
        if job.status in sm.FINISHED:
            raise APIError(409, f"job {job_id} is already {job.status}", status_now=job.status) from None
        raise APIError(409, f"job {job_id} changed while cancelling; try again", status_now=job.status) from None
    code = 200 if job.status == sm.CANCELLED else 202
    return jsonify(sm.serialize_job(job, sm.model_ids_for(session, [job.id]).get(job.id))), code


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str):  # noqa: ANN201
    """A job's recorded state transitions, oldest first."""
    job = _get_job(job_id)
    return jsonify({"items": [
        {"from": e.from_status, "to": e.to_status, "message": e.message, "at": e.created_at.isoformat()}
        for e in job.events
    ]})


@bp.get("/jobs")
def list_jobs():  # noqa: ANN201
    """Jobs, newest first, optionally filtered by ?status= and ?kind=."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
    filters = {}
    status = request.args.get("status")
    if status:
        if status not in sm.STATUSES:
            raise APIError(400, f"status must be one of {list(sm.STATUSES)}", field="status")
        query, filters["status"] = query.where(Job.status == status), status
    kind = request.args.get("kind")
    if kind:
        if kind not in sm.KINDS:
            raise APIError(400, f"kind must be one of {list(sm.KINDS)}", field="kind")
        query, filters["kind"] = query.where(Job.kind == kind), kind

    def serialize(jobs: list[Job]) -> list[dict]:
        ids = sm.model_ids_for(db(), [j.id for j in jobs])
        return [sm.serialize_job(j, ids.get(j.id)) for j in jobs]

    return page(query, "jobs.list_jobs", serialize, **filters)
