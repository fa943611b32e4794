"""Job endpoints: submit a training job; read, list and cancel jobs of any kind; a job's events and log lines."""
from __future__ import annotations

import logging

from typing import Any

from flask import Response, jsonify, url_for
from sqlalchemy import false, or_, select, true

from graft.api.context import config, db
from graft.api.datasets import training_source
from graft.api.enqueue import accepted, enqueue_or_fail
from graft.api.errors import APIError
from graft.api.openapi import Blueprint
from graft.api.owners import get_owned, owner_id, visible
from graft.api.pagination import page
from graft.api.quotas import check_job_quota
from graft.api.schemas import EventList, JobListArgs, JobPage, JobSchema, LogArgs, LogPage, TrainRequest
from graft.api.validation import check_callback
from graft.shared import lifecycle
from graft.shared.models import Job, JobLogLine
from graft.shared.serializers import model_ids_for, serialize_event, serialize_job, serialize_log_line

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__, description="Training jobs, and jobs of any kind: read, list, cancel, events.")


def _get_job(job_id: str) -> Job:
    return get_owned(Job, job_id, "job")


@bp.post("/jobs/train")
@bp.arguments(TrainRequest)
@bp.response(202, JobSchema, headers={"Location": {"description": "the job's URL", "schema": {"type": "string"}}})
@bp.problems(401, 404, 409, 413, 503)
def submit_train(params: dict[str, Any]) -> Response:
    """Validate, record a queued job, enqueue it; 202 with the job and its Location (429 past the job quota)."""
    check_callback(params, config())
    training_source(params)  # data_dir, or the caller's ready dataset_id as its folder (409 while inspecting)
    check_job_quota()
    session = db()
    job = lifecycle.create_job(session, "train", params, owner_id())
    session.commit()
    enqueue_or_fail(session, job)
    return accepted(job)


@bp.get("/jobs/<id:job_id>")
@bp.response(200, JobSchema)
@bp.problems(401, 404)
def get_job(job_id: str) -> Response:
    """One job."""
    job = _get_job(job_id)
    return jsonify(serialize_job(job, model_ids_for(db(), [job.id]).get(job.id)))


@bp.post("/jobs/<id:job_id>/cancel")
@bp.response(200, JobSchema, description="cancelled (it was queued, or a running predict job)")
@bp.alt_response(202, schema=JobSchema, description="a running training job asked to stop at its next batch")
@bp.problems(401, 404, 409)
def cancel_job(job_id: str) -> Response:
    """Cancel a queued or running predict job at once, or ask a running training job to stop at its next batch;
    409 when finished."""
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
    response = jsonify(serialize_job(job, model_ids_for(session, [job.id]).get(job.id)))
    response.status_code = code
    return response


@bp.get("/jobs/<id:job_id>/events")
@bp.response(200, EventList)
@bp.problems(401, 404)
def job_events(job_id: str) -> Response:
    """A job's recorded state transitions, oldest first."""
    job = _get_job(job_id)
    return jsonify({"items": [serialize_event(e) for e in job.events]})


@bp.get("/jobs/<id:job_id>/logs")
@bp.arguments(LogArgs, location="query")
@bp.response(200, LogPage)
@bp.problems(401, 404)
def job_logs(args: dict[str, Any], job_id: str) -> Response:
    """The lines the job's workers logged (epochs, warnings, errors), oldest first; ?after=<id> for the next ones."""
    job_id = _get_job(job_id).id  # the full id, also when the path gave a prefix
    limit = args["limit"]
    rows = db().scalars(select(JobLogLine).where(JobLogLine.job_id == job_id, JobLogLine.id > args["after"])
                        .order_by(JobLogLine.id).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = url_for("jobs.job_logs", job_id=job_id, after=rows[-1].id, limit=limit) if more else None
    return jsonify({"items": [serialize_log_line(r) for r in rows], "next": nxt})


@bp.get("/jobs")
@bp.arguments(JobListArgs, location="query")
@bp.response(200, JobPage)
@bp.problems(401)
def list_jobs(args: dict[str, Any]) -> Response:
    """The caller's jobs (an admin's: everyone's), newest first, optionally filtered by ?status= and ?kind=; the
    synchronous tries of a model (params.interactive) only with ?interactive=true, so they bury no real job."""
    query = visible(select(Job), Job).order_by(Job.created_at.desc(), Job.id.desc())
    is_try = Job.params["interactive"].as_boolean()
    filters = {}
    if args.get("interactive"):
        query, filters["interactive"] = query.where(is_try == true()), "true"
    else:
        query = query.where(or_(is_try.is_(None), is_try == false()))
    if "status" in args:
        query, filters["status"] = query.where(Job.status == args["status"]), args["status"]
    if "kind" in args:
        query, filters["kind"] = query.where(Job.kind == args["kind"]), args["kind"]

    def serialize(jobs: list[Job]) -> list[dict]:
        ids = model_ids_for(db(), [j.id for j in jobs])
        return [serialize_job(j, ids.get(j.id)) for j in jobs]

    return page(query, "jobs.list_jobs", serialize, args, **filters)
