"""One chunk of a predict job: claim it, classify it under a renewed lease, then store its rows and mark it done
in one transaction. The chunk that finds no other chunk left records the summary and ends the job there too.
"""
from __future__ import annotations

import logging
import os
from dataclasses import astuple, dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from graft.shared import chunks, lifecycle
from graft.shared.config import Config, get_config
from graft.shared.db import session_scope, with_db_retry
from graft.shared.files import listed_path
from graft.shared.models import Job, PredictionResult, utcnow
from graft.shared.params import UNKNOWN
from graft.shared.serializers import as_utc, stored_result
from graft.shared.thumbs import RESULT_THUMB_CHUNKS, RESULT_THUMBS_PER_CHUNK, job_thumbs_dir
from graft.worker.lease import Heartbeat, beat_interval, holder_alive
from graft.worker.predict_common import input_folder, model_path, release_job_upload

log = logging.getLogger(__name__)

RETRY_BASE_S = 2.0  # a chunk whose attempt raised runs again after 2 s, then 4 s, ... until GRAFT_MAX_ATTEMPTS


@dataclass(frozen=True)
class Held:
    """Our claim on one chunk: the compare-and-set key of every later write."""

    job_id: str
    index: int
    worker: str
    pid: int
    attempt: int


def _claim(config: Config, job_id: str, index: int, worker: str) -> tuple[Held, list[str], dict[str, Any]] | None:
    with session_scope(config.database_url) as session:
        chunk = chunks.claim_chunk(session, job_id, index, worker, os.getpid(), config.lease_s, config.max_attempts,
                                   holder_alive(worker))
        if chunk is None:
            return None
        params = dict(session.get(Job, job_id).params)
        return Held(job_id, index, worker, chunk.worker_pid, chunk.attempts), list(chunk.names), params


def _renew(config: Config, held: Held) -> bool:
    with session_scope(config.database_url) as session:
        return chunks.renew_chunk(session, *astuple(held), config.lease_s)


def run_predict_chunk(job_id: str, index: int, worker: str, config: Config | None = None) -> dict[str, Any]:
    """Classify chunk index of a running predict job and store its rows; returns a small report.

    The report has retry_in (seconds) when this attempt raised and the chunk should be sent again.
    """
    from graft.worker.core.model_cache import default_cache
    from graft.worker.core.stop import Stopped

    config = config or get_config()
    claimed = _claim(config, job_id, index, worker)
    if claimed is None:
        release_job_upload(config, job_id)  # the job may have ended: its upload is then no longer needed
        return {"chunk": index, "files": 0, "skipped": True}
    held, names, params = claimed
    rows: list[dict[str, Any]] | None = None
    # The dashboard's result thumbnails (bounded), cut from the decoded pixels; a synchronous answer waits for none.
    thumbs = RESULT_THUMBS_PER_CHUNK if index < RESULT_THUMB_CHUNKS and not params.get("interactive") else 0
    with Heartbeat(lambda: _renew(config, held), beat_interval(config.lease_s), f"chunk-{job_id[:8]}-{index}") as beat:
        try:
            folder, roots = input_folder(config, params)
            predictor = default_cache().get(model_path(config, params["model_id"]), params.get("precision") or "fp32",
                                            params.get("runtime"), max_pixels=config.max_image_pixels)
            rows = predictor.predict_files([(name, listed_path(folder, name)) for name in names], params.get("top_k", 1),
                                           params.get("threshold"), roots, should_stop=beat.should_stop,
                                           target_precision=params.get("target_precision"),
                                           reject_ood=params.get("reject_ood", True), tta=bool(params.get("tta")),
                                           thumbs_dir=job_thumbs_dir(config.artifacts_dir, job_id), thumbs=thumbs)
        except Stopped:
            log.info("predict job %s: chunk %d stopped (job ended or chunk taken over)", job_id, index)
        except Exception as exc:  # noqa: BLE001 - any error: try the chunk again, or fail the job after the last try
            log.exception("predict job %s: chunk %d, attempt %d failed", job_id, index, held.attempt)
            return _attempt_failed(config, held, names, exc)
    stored = rows is not None and with_db_retry(lambda: _store(config, held, rows), config.lease_s,
                                                f"predict job {job_id}: chunk {index}")
    if not stored:
        _let_go(config, held)
        release_job_upload(config, job_id)
        return {"chunk": index, "files": 0, "stopped": True}
    release_job_upload(config, job_id)  # removes it only when this chunk was the last
    return {"chunk": index, "files": len(rows), "errors": sum(1 for r in rows if r["error"]),
            "runtime": predictor.runtime}


def _let_go(config: Config, held: Held) -> None:
    """Put our chunk back to pending when it is still ours (its job ended): no chunk claims to run for nothing."""
    with session_scope(config.database_url) as session:
        chunks.release_chunk(session, *astuple(held), error="stopped: its job ended")


def _attempt_failed(config: Config, held: Held, names: list[str], exc: Exception) -> dict[str, Any]:
    reason = f"{type(exc).__name__}: {exc}"
    with session_scope(config.database_url) as session:
        if held.attempt >= config.max_attempts:
            error = f"chunk {held.index} failed after {held.attempt} attempt(s): {reason} ({chunks.files_of(names)})"
            chunks.fail_job(session, session.get(Job, held.job_id), error)
            released = False
        else:
            released = chunks.release_chunk(session, *astuple(held), error=reason)
    if not released:
        release_job_upload(config, held.job_id)
        return {"chunk": held.index, "files": 0, "failed": True}
    return {"chunk": held.index, "files": 0, "retry_in": RETRY_BASE_S * 2 ** (held.attempt - 1)}


def _store(config: Config, held: Held, rows: list[dict[str, Any]]) -> bool:
    """Rows in, chunk done, progress or the job's end: one transaction, while the job runs and the chunk is ours."""
    with session_scope(config.database_url) as session:
        # PostgreSQL: the job's row lock orders this against other chunks' ends and a cancel, so exactly one chunk
        # sees none left, and a cancel lands wholly before (rows refused) or after (rows kept) this store. SQLite:
        # finish_chunk, the first write, takes the database's write lock, which does the same.
        job = session.scalars(select(Job).where(Job.id == held.job_id).with_for_update()).one_or_none()
        if job is None or not chunks.finish_chunk(session, *astuple(held)):
            session.rollback()
            return False
        session.refresh(job)
        if job.status != lifecycle.RUNNING:
            session.rollback()
            log.info("predict job %s: %s, chunk %d's rows not stored", job.id, job.status, held.index)
            return False
        where = (PredictionResult.job_id == held.job_id, PredictionResult.chunk == held.index)
        session.execute(delete(PredictionResult).where(*where))  # an earlier attempt's rows, if any got in
        if rows:
            session.execute(insert(PredictionResult), [
                {**stored_result(row), "job_id": held.job_id, "chunk": held.index, "worker": held.worker}
                for row in rows])
        try:
            if chunks.remaining(session, held.job_id) == 0:
                _finish(session, job)
            else:
                _progress(session, job)
        except lifecycle.StaleJob:
            return False  # rolled back: the job changed under our lock (it cannot, but never record half)
    return True


def _eta(job: Job, done: int, total: int) -> float | None:
    if not done or not job.started_at:
        return None
    started = as_utc(job.started_at)  # SQLite hands back naive datetimes; ours are UTC
    elapsed = (utcnow() - started).total_seconds()
    return round(elapsed * (total - done) / done, 1)


def _progress(session: Session, job: Job) -> None:
    done = session.scalar(select(func.count()).where(PredictionResult.job_id == job.id))
    total = int((job.progress or {}).get("files_total") or done or 1)
    job.progress = {**(job.progress or {}), "files_done": done, "fraction": round(min(1.0, done / total), 4),
                    "eta_s": _eta(job, done, total)}


def result_summary(session: Session, job_id: str) -> dict[str, Any]:
    """Counts over a job's stored rows: files, per label, unknown, errors, and files per worker."""
    where = PredictionResult.job_id == job_id
    files = session.scalar(select(func.count()).where(where))
    errors = session.scalar(select(func.count()).where(where, PredictionResult.error.is_not(None)))
    labels = dict(session.execute(
        select(PredictionResult.label, func.count()).where(where, PredictionResult.error.is_(None))
        .group_by(PredictionResult.label).order_by(PredictionResult.label)
    ).all())
    workers = dict(session.execute(
        select(PredictionResult.worker, func.count()).where(where).group_by(PredictionResult.worker)
    ).all())
    return {"files": files, "labels": labels, "unknown": labels.get(UNKNOWN, 0), "errors": errors, "workers": workers}


def _finish(session: Session, job: Job) -> None:
    """The last chunk is in: check every file has its row, record the summary, end the job."""
    summary = result_summary(session, job.id)
    summary["ignored"] = (job.metrics or {}).get("ignored_files", 0)
    summary["non_utf8_names"] = (job.metrics or {}).get("non_utf8_names", 0)  # rows named in their escaped form
    total = (job.progress or {}).get("files_total")
    progress = {**(job.progress or {}), "files_done": summary["files"], "fraction": 1.0, "eta_s": 0, "phase": "done"}
    if summary["files"] != total:
        error = f"results incomplete: {summary['files']} of {total} files have a row"
        lifecycle.transition(session, job, lifecycle.FAILED, message=error, error=error, progress=progress)
        return
    message = f"{summary['files']} files, {summary['errors']} errors"
    lifecycle.transition(session, job, lifecycle.SUCCEEDED, message=message, metrics={"summary": summary},
                         progress=progress)
