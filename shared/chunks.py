"""The chunks of a predict job in the database: pending → running (with a lease) → done, each move a compare-and-set.

A chunk is claimed like a training job: pending, or running with an expired lease or a dead holder, becomes running
with attempts + 1. The sweep puts chunks whose lease expired back to pending to be sent again; a chunk that used up
GRAFT_MAX_ATTEMPTS fails its job (through shared.lifecycle, the only place a job's status changes). The caller
commits, as in shared.lifecycle.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Callable, Sequence

from sqlalchemy import and_, exists, func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from graft.shared import lifecycle
from graft.shared.models import Job, PredictChunk, utcnow
from graft.shared.serializers import as_utc

log = logging.getLogger(__name__)

PENDING, RUNNING, DONE = "pending", "running", "done"
NAMES_SHOWN = 3  # how many of a chunk's files an error message names


def files_of(names: Sequence[str]) -> str:
    """'8 files: a.jpg, b.jpg, c.jpg and 5 more': enough to find the files of a chunk that failed."""
    shown = ", ".join(names[:NAMES_SHOWN])
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return f"{len(names)} file{'s' if len(names) != 1 else ''}: {shown}{more}"


def create_chunks(session: Session, job_id: str, chunks: Sequence[Sequence[str]]) -> list[int]:
    """Insert one pending row per chunk of file names; returns their indexes."""
    now = utcnow()
    session.execute(insert(PredictChunk), [
        {"job_id": job_id, "index": index, "names": list(names), "status": PENDING, "attempts": 0, "updated_at": now}
        for index, names in enumerate(chunks)])
    return list(range(len(chunks)))


def has_chunks(session: Session, job_id: str) -> bool:
    """True once the job's listing wrote its chunks."""
    return bool(session.scalar(select(exists().where(PredictChunk.job_id == job_id))))


def pending_indexes(session: Session, job_id: str) -> list[int]:
    """The indexes of the job's chunks still waiting for a worker."""
    return list(session.scalars(select(PredictChunk.index).where(
        PredictChunk.job_id == job_id, PredictChunk.status == PENDING).order_by(PredictChunk.index)))


def remaining(session: Session, job_id: str) -> int:
    """How many of the job's chunks are not done."""
    return session.scalar(select(func.count()).where(PredictChunk.job_id == job_id, PredictChunk.status != DONE))


def fail_job(session: Session, job: Job, error: str) -> bool:
    """Fail a running job because of one of its chunks; False when it had already ended (caller commits)."""
    if job.status != lifecycle.RUNNING:
        return False
    try:
        lifecycle.transition(session, job, lifecycle.FAILED, message=error, error=error)
    except lifecycle.StaleJob:
        return False
    return True


def _cas(session: Session, chunk: PredictChunk, *also: Any, **values: Any) -> bool:
    """Move chunk from the (status, attempts) it was read with; False when someone changed it first."""
    values.setdefault("updated_at", utcnow())
    result = session.execute(update(PredictChunk).where(
        PredictChunk.job_id == chunk.job_id, PredictChunk.index == chunk.index,
        PredictChunk.status == chunk.status, PredictChunk.attempts == chunk.attempts, *also).values(**values)
        .execution_options(synchronize_session=False))  # the values are set on chunk below, once we know we won
    if result.rowcount != 1:
        return False
    for name, value in values.items():
        set_committed_value(chunk, name, value)
    return True


def claim_chunk(
    session: Session, job_id: str, index: int, worker: str, pid: int, lease_s: float, max_attempts: int,
    holder_alive: Callable[[PredictChunk], bool],
) -> PredictChunk | None:
    """Take chunk index of a running job for this worker process, or None when it is not ours to run.

    A running chunk is taken over only when its holder is gone (lease expired, or a dead local pid). A chunk that
    already used max_attempts fails its job instead: it killed its worker (or lost its lease) every time.
    """
    chunk = session.get(PredictChunk, (job_id, index))
    job = session.get(Job, job_id)
    if chunk is None or job is None or job.status != lifecycle.RUNNING or chunk.status == DONE:
        log.info("predict job %s: chunk %d not to run (job %s, chunk %s)", job_id, index,
                 job.status if job else "gone", chunk.status if chunk else "gone")
        return None
    now = utcnow()
    if chunk.status == RUNNING:
        expired = chunk.lease_expires_at is None or as_utc(chunk.lease_expires_at) <= now
        if not expired and holder_alive(chunk):
            log.info("predict job %s: chunk %d held by %s (pid %s)", job_id, index, chunk.worker, chunk.worker_pid)
            return None
        log.warning("predict job %s: chunk %d's holder %s (pid %s) is gone, taking over", job_id, index,
                    chunk.worker, chunk.worker_pid)
    if chunk.attempts >= max_attempts:
        fail_job(session, job, f"chunk {index} gave up after {chunk.attempts} attempts: the worker classifying it "
                               f"died or lost its lease each time ({files_of(chunk.names)})")
        return None
    lease = now + timedelta(seconds=lease_s)
    if not _cas(session, chunk, status=RUNNING, attempts=chunk.attempts + 1, worker=worker, worker_pid=pid,
                lease_expires_at=lease, updated_at=now):
        session.rollback()
        log.info("predict job %s: chunk %d claimed by another worker first", job_id, index)
        return None
    return chunk


def _held(job_id: str, index: int, worker: str, pid: int, attempt: int):  # noqa: ANN202 - a SQL condition
    return and_(PredictChunk.job_id == job_id, PredictChunk.index == index, PredictChunk.status == RUNNING,
                PredictChunk.worker == worker, PredictChunk.worker_pid == pid, PredictChunk.attempts == attempt)


def renew_chunk(session: Session, job_id: str, index: int, worker: str, pid: int, attempt: int,
                lease_s: float) -> bool:
    """Extend our chunk's lease; False when the chunk was taken from us or its job is no longer running."""
    now = utcnow()
    result = session.execute(update(PredictChunk).where(_held(job_id, index, worker, pid, attempt))
                             .values(lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now))
    if result.rowcount != 1:
        return False
    return session.scalar(select(Job.status).where(Job.id == job_id)) == lifecycle.RUNNING


def finish_chunk(session: Session, job_id: str, index: int, worker: str, pid: int, attempt: int) -> bool:
    """Mark our chunk done (in the transaction that stores its rows); False when it is no longer ours."""
    return session.execute(update(PredictChunk).where(_held(job_id, index, worker, pid, attempt)).values(
        status=DONE, lease_expires_at=None, error=None, updated_at=utcnow())).rowcount == 1


def release_chunk(session: Session, job_id: str, index: int, worker: str, pid: int, attempt: int,
                  error: str | None = None) -> bool:
    """Give our chunk back (pending, no lease): its attempt failed or its job ended. False when not ours."""
    return session.execute(update(PredictChunk).where(_held(job_id, index, worker, pid, attempt)).values(
        status=PENDING, lease_expires_at=None, error=error, updated_at=utcnow())).rowcount == 1


def sweep_chunks(session: Session, max_attempts: int) -> list[tuple[str, int]]:
    """Recover running jobs' chunks whose lease expired: back to pending, or fail the job. Returns what to send."""
    now = utcnow()
    stale = session.scalars(select(PredictChunk).join(Job, Job.id == PredictChunk.job_id).where(
        Job.status == lifecycle.RUNNING, PredictChunk.status == RUNNING, PredictChunk.lease_expires_at < now)).all()
    resend = []
    for chunk in stale:
        lost = f"lease of {chunk.worker} (pid {chunk.worker_pid}) expired"
        if chunk.attempts >= max_attempts:
            job = session.get(Job, chunk.job_id)
            if fail_job(session, job, f"chunk {chunk.index} gave up after {chunk.attempts} attempts: {lost} "
                                      f"({files_of(chunk.names)})"):
                session.commit()
            continue
        if _cas(session, chunk, PredictChunk.lease_expires_at < now, status=PENDING, lease_expires_at=None, error=lost):
            session.commit()
            log.warning("predict job %s: chunk %d: %s; sent again", chunk.job_id, chunk.index, lost,
                        extra={"job_id": chunk.job_id})
            resend.append((chunk.job_id, chunk.index))
        else:
            session.rollback()  # its holder renewed or finished it, or another sweeper got there first
    return resend


def resend_stalled(session: Session, older_than_s: float) -> list[tuple[str, int]]:
    """Pending chunks of running jobs none of whose chunks moved (claim, renewal, end) for older_than_s.

    Their messages may be lost (Redis restarted without persistence, a lister died between writing and sending).
    Sending again is harmless, claims being compare-and-set; touching updated_at restarts the clock, so a job
    waiting behind a long queue gets at most one extra message per chunk per period. Commits.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    stalled = list(session.scalars(
        select(PredictChunk.job_id).join(Job, Job.id == PredictChunk.job_id).where(Job.status == lifecycle.RUNNING)
        .group_by(PredictChunk.job_id).having(func.max(PredictChunk.updated_at) < cutoff)))
    where = and_(PredictChunk.job_id.in_(stalled), PredictChunk.status == PENDING)
    found = [tuple(row) for row in session.execute(select(PredictChunk.job_id, PredictChunk.index).where(where))]
    if found:
        session.execute(update(PredictChunk).where(where).values(updated_at=utcnow()))
    session.commit()  # recorded before sending: a crash in between only delays the next re-send by a period
    return found
