"""The one job state machine (queued → running → succeeded | failed | cancelled) and the job serializer."""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import Job, JobEvent, TrainedModel, utcnow

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
KINDS = ("train", "predict")

# Allowed moves. running → queued is a re-queue after a lost worker; nothing leaves a finished state.
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, FAILED, CANCELLED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, QUEUED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    """A status change the state machine does not allow."""

    def __init__(self, job_id: str, current: str, target: str) -> None:
        super().__init__(f"job {job_id}: cannot go from {current} to {target}")
        self.current, self.target = current, target


def can_transition(current: str, target: str) -> bool:
    """True when the state machine allows current → target."""
    return target in TRANSITIONS.get(current, frozenset())


def create_job(session: Session, kind: str, params: dict[str, Any]) -> Job:
    """Insert a queued job and its creation event (caller commits)."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    job = Job(kind=kind, status=QUEUED, params=params, progress={}, metrics={})
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, from_status=None, to_status=QUEUED, message="created"))
    return job


def transition(session: Session, job: Job, target: str, message: str | None = None, **fields: Any) -> Job:
    """Move job to target, set the timestamps and extra fields, and record an event (caller commits)."""
    if not can_transition(job.status, target):
        raise IllegalTransition(job.id, job.status, target)
    now = utcnow()
    previous = job.status
    job.status = target
    if target == RUNNING:
        job.started_at = now
        job.attempts = (job.attempts or 0) + 1
    elif target in FINISHED:
        job.finished_at = now
    for name, value in fields.items():
        setattr(job, name, value)
    session.add(JobEvent(job_id=job.id, from_status=previous, to_status=target, message=message))
    log.info("job %s: %s -> %s%s", job.id, previous, target, f" ({message})" if message else "")
    return job


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def serialize_job(job: Job, model_id: str | None = None) -> dict[str, Any]:
    """The job resource as the API shows it."""
    progress = {"epoch": 0, "epochs": None, "fraction": 0.0, "eta_s": None}
    progress.update(job.progress or {})
    metrics = {"history": [], "best_val_acc": None, "skipped_files": []}
    metrics.update(job.metrics or {})
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "params": job.params,
        "progress": progress,
        "metrics": metrics,
        "model_id": model_id,
        "error": job.error,
        "worker": job.worker,
        "attempts": job.attempts,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def model_ids_for(session: Session, job_ids: list[str]) -> dict[str, str]:
    """Map job id → model id for the given jobs (one query)."""
    if not job_ids:
        return {}
    rows = session.execute(select(TrainedModel.job_id, TrainedModel.id).where(TrainedModel.job_id.in_(job_ids)))
    return {job_id: model_id for job_id, model_id in rows}
