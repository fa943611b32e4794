"""The one job state machine: queued → running → succeeded | failed | cancelled, every move recorded as an event.

Every status change anywhere in Graft goes through transition(), claim(), request_cancel() or sweep_expired() here;
resend_stale_queued() records (as a queued → queued event) each time a lost message is sent again.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Callable

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from graft.shared.models import Job, JobEvent, utcnow
from graft.shared.serializers import as_utc
from graft.shared.webhooks import record_delivery

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


class StaleJob(Exception):
    """The job changed under us (another worker, a sweep or a cancel got there first)."""


def can_transition(current: str, target: str) -> bool:
    """True when the state machine allows current → target."""
    return target in TRANSITIONS.get(current, frozenset())


def create_job(session: Session, kind: str, params: dict[str, Any], owner_id: str | None = None) -> Job:
    """Insert a queued job owned by owner_id (None: admins only) and its creation event (caller commits)."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    job = Job(kind=kind, status=QUEUED, params=params, progress={}, metrics={}, attempts=0, owner_id=owner_id)
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, from_status=None, to_status=QUEUED, message="created"))
    return job


_NO_LEASE = {"lease_expires_at": None, "heartbeat_at": None}


def transition(session: Session, job: Job, target: str, message: str | None = None, **fields: Any) -> Job:
    """Move job to target as a compare-and-set on (status, attempts), set timestamps, record an event.

    Raises IllegalTransition for a move the machine forbids, StaleJob when the row changed since it was read.
    The caller commits.
    """
    if not can_transition(job.status, target):
        raise IllegalTransition(job.id, job.status, target)
    now = utcnow()
    previous, attempts = job.status, job.attempts or 0
    values: dict[str, Any] = {"status": target, **fields}
    if target == RUNNING:
        values.update(started_at=now, attempts=attempts + 1)
    elif target in FINISHED:
        values.update(finished_at=now, **_NO_LEASE)
    elif target == QUEUED:
        values.update(_NO_LEASE)
    result = session.execute(
        update(Job).where(Job.id == job.id, Job.status == previous, Job.attempts == attempts).values(**values)
    )
    if result.rowcount != 1:
        session.rollback()
        raise StaleJob(f"job {job.id} is no longer {previous} (attempt {attempts})")
    for name, value in values.items():
        set_committed_value(job, name, value)
    session.add(JobEvent(job_id=job.id, from_status=previous, to_status=target, message=message))
    if target in FINISHED:
        record_delivery(session, job, now)  # the callback's outbox row commits (or not) with the final status
    log.info("job %s: %s -> %s%s", job.id, previous, target, f" ({message})" if message else "",
             extra={"job_id": job.id})  # the API and the sweeper log this outside any job's own context
    return job


def claim(
    session: Session, job_id: str, worker: str, pid: int, lease_s: float, max_attempts: int,
    holder_alive: Callable[[Job], bool],
) -> Job | None:
    """Take the job for this worker process, or return None when it is not ours to run (caller commits).

    A queued job is taken; a running job only when its holder is gone (lease expired, or a dead local pid):
    it goes back to queued first, so every move is one the machine allows and each is recorded.
    """
    job = session.get(Job, job_id)
    if job is None:
        log.warning("job %s: not in the database, message dropped", job_id)
        return None
    now = utcnow()
    if job.status == RUNNING:
        expired = job.lease_expires_at is None or as_utc(job.lease_expires_at) <= now
        if not expired and holder_alive(job):
            log.info("job %s: held by %s (pid %s) until %s", job_id, job.worker, job.worker_pid, job.lease_expires_at)
            return None
        transition(session, job, QUEUED, message=f"holder {job.worker} (pid {job.worker_pid}) is gone")
    elif job.status != QUEUED:
        log.info("job %s: %s, nothing to do", job_id, job.status)
        return None
    if job.cancel_requested:
        transition(session, job, CANCELLED, message="cancelled before it started")
        return None
    if job.attempts >= max_attempts:
        error = f"gave up after {job.attempts} attempts: the worker running it died or lost its lease each time"
        transition(session, job, FAILED, message=error, error=error)
        return None
    lease = now + timedelta(seconds=lease_s)
    return transition(session, job, RUNNING, message=f"attempt {job.attempts + 1} on {worker} (pid {pid})",
                      worker=worker, worker_pid=pid, lease_expires_at=lease, heartbeat_at=now)


def _held(job_id: str, worker: str, pid: int, attempt: int):  # noqa: ANN202 - a SQL condition
    return and_(Job.id == job_id, Job.status == RUNNING, Job.worker == worker,
                Job.worker_pid == pid, Job.attempts == attempt)


def renew_lease(session: Session, job_id: str, worker: str, pid: int, attempt: int, lease_s: float) -> tuple[bool, bool]:
    """Extend our lease; returns (still held, cancel requested). The caller commits."""
    now = utcnow()
    result = session.execute(update(Job).where(_held(job_id, worker, pid, attempt))
                             .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_s)))
    if result.rowcount != 1:
        return False, False
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return True, bool(cancel)


def update_held(session: Session, job_id: str, worker: str, pid: int, attempt: int, **values: Any) -> bool:
    """Write progress fields only while we still hold the job; True if written. The caller commits."""
    return session.execute(update(Job).where(_held(job_id, worker, pid, attempt)).values(**values)).rowcount == 1


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel a queued job (or a running predict job) now, or ask a running training job's worker to stop it.

    A predict job has no checkpoint to stop cleanly at: it is cancelled at once, and its chunks then refuse to
    store rows (they do so only while the job is running) and stop at their next batch. Rows stored so far stay.
    The caller commits.
    """
    if job.status == QUEUED:
        return transition(session, job, CANCELLED, message="cancelled by user")
    if job.status != RUNNING:
        raise IllegalTransition(job.id, job.status, CANCELLED)
    if job.kind == "predict":
        return transition(session, job, CANCELLED, message="cancelled by user; rows stored so far kept")
    result = session.execute(update(Job).where(Job.id == job.id, Job.status == RUNNING).values(cancel_requested=True))
    if result.rowcount != 1:
        session.rollback()
        raise StaleJob(f"job {job.id} is no longer running")
    set_committed_value(job, "cancel_requested", True)
    session.add(JobEvent(job_id=job.id, from_status=RUNNING, to_status=RUNNING, message="cancel requested"))
    return job


def sweep_expired(session: Session, max_attempts: int) -> list[tuple[str, str]]:
    """Recover running jobs whose lease expired: re-queue, cancel or fail them. Returns (id, kind) to enqueue again.

    A predict job holds a lease only while it lists its input; once its chunks are sent, their own leases
    (shared.chunks) take over and the job's is cleared, so this never sees it.
    """
    now = utcnow()
    stale = session.scalars(select(Job).where(Job.status == RUNNING, Job.lease_expires_at < now)).all()
    requeue = []
    for job in stale:
        lost = f"lease of {job.worker} (pid {job.worker_pid}) expired"
        try:
            if job.cancel_requested:
                transition(session, job, CANCELLED, message=f"{lost}; cancel was requested")
            elif job.attempts >= max_attempts:
                error = f"gave up after {job.attempts} attempts: {lost}"
                transition(session, job, FAILED, message=error, error=error)
            else:
                transition(session, job, QUEUED, message=f"{lost}; re-queued")
                requeue.append((job.id, job.kind))
            session.commit()
        except StaleJob:
            continue  # another sweeper or the holder got there first
    return requeue


def resend_stale_queued(session: Session, older_than_s: float) -> list[tuple[str, str]]:
    """Queued jobs nothing has touched for older_than_s: record a re-send; returns (id, kind) to enqueue again.

    The message of a queued job can be lost (the API died between commit and send, a sweeper between its
    re-queue and its send, Redis restarted without persistence). Sending it again is harmless because claims
    are compare-and-set: a duplicate finds the job running or finished and does nothing. The event row restarts
    the clock, so a job waiting behind a long queue gets at most one extra message per period.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    last = select(JobEvent.job_id, func.max(JobEvent.created_at).label("at")).group_by(JobEvent.job_id).subquery()
    stale = session.execute(
        select(Job.id, Job.kind).join(last, last.c.job_id == Job.id).where(Job.status == QUEUED, last.c.at < cutoff)
    ).all()
    resend = []
    for job_id, kind in stale:
        session.add(JobEvent(job_id=job_id, from_status=QUEUED, to_status=QUEUED,
                             message=f"no worker took it for {older_than_s:g} s; message sent again"))
        resend.append((job_id, kind))
    session.commit()  # recorded before sending: a crash in between only delays the next re-send by a period
    return resend
