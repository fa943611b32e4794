"""Sending recorded jobs to their queue, and the one 202 answer for an accepted job."""
from __future__ import annotations

import logging
from typing import Any, Callable

from celery import Celery
from flask import Response, jsonify, url_for
from sqlalchemy.orm import Session

from graft.api.context import celery
from graft.api.errors import APIError
from graft.shared import lifecycle
from graft.shared.models import Job
from graft.shared.queue import enqueue_train
from graft.shared.serializers import serialize_job

log = logging.getLogger(__name__)


def enqueue_or_fail(session: Session, job: Job, send: Callable[[Celery, str], Any] = enqueue_train,
                    cleanup: Callable[[], None] | None = None) -> Any:  # noqa: ANN401 - whatever send returns
    """Send the job to its queue; with the broker down, record it as failed (then cleanup) and answer 503."""
    try:
        return send(celery(), job.id)
    except Exception as exc:  # noqa: BLE001 - broker down: the job is recorded, then marked failed
        log.exception("could not enqueue job %s", job.id)
        lifecycle.transition(session, job, lifecycle.FAILED, message="queue unavailable",
                             error=f"queue unavailable: {exc}")
        session.commit()
        if cleanup is not None:
            cleanup()
        raise APIError(503, "the job queue (Redis) is unavailable; the job was recorded as failed", job_id=job.id) from None


def accepted(job: Job) -> Response:
    """202 with the job and its Location."""
    response = jsonify(serialize_job(job))
    response.status_code = 202
    response.headers["Location"] = url_for("jobs.get_job", job_id=job.id)
    return response
