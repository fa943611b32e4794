"""Predict job runner: list the input, fan out chunks, store each chunk's rows, finish with a summary.

Tasks call in here with ids only; the pure core (worker.core.predict) does the classifying.
"""
from __future__ import annotations

import logging
from datetime import timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from sqlalchemy import delete, func, insert, select

from graft.shared import lifecycle
from graft.shared.config import Config, get_config
from graft.shared.db import session_scope
from graft.shared.models import Job, PredictionResult, TrainedModel, utcnow
from graft.shared.storage import PathNotAllowed, resolve_under_roots
from graft.shared.uploads import UploadError, release_upload, upload_dir

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 256
Dispatch = Callable[[list[list[str]]], None]


class InputGone(LookupError):
    """The job's input folder or model is no longer there."""


def input_folder(config: Config, params: dict[str, Any]) -> tuple[Path, list[Path]]:
    """The folder to classify and the roots every file must stay inside."""
    if params.get("upload_id"):
        folder = upload_dir(config.artifacts_dir, params["upload_id"])
        if not folder.is_dir():
            raise InputGone(f"upload {params['upload_id']} is gone")
        return folder, [folder.resolve()]
    folder = resolve_under_roots(params["input_dir"], config.data_roots)
    return folder, list(config.data_roots)


def _model_path(config: Config, model_id: str) -> str:
    with session_scope(config.database_url) as session:
        model = session.get(TrainedModel, model_id)
        if model is None:
            raise InputGone(f"model {model_id} no longer exists")
        return model.path


def _start(config: Config, job_id: str, worker: str) -> dict[str, Any] | None:
    """Mark the job running and return its params, or None when it is not ours to run.

    Predict jobs hold no lease: their chunks are separate tasks, each redelivered and retried by Celery.
    """
    with session_scope(config.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s: not in the database, message dropped", job_id)
            return None
        if job.status != lifecycle.QUEUED:
            log.info("job %s: status %s, nothing to do", job_id, job.status)
            return None
        try:
            lifecycle.transition(session, job, lifecycle.RUNNING, message=f"started on {worker}", worker=worker)
        except lifecycle.StaleJob:
            return None
        return dict(job.params)


def _end(session: Any, job: Job | None, target: str, message: str, **fields: Any) -> bool:
    """Move a running job to target; False when it already left running (someone else ended it)."""
    if job is None or job.status != lifecycle.RUNNING:
        return False
    try:
        lifecycle.transition(session, job, target, message=message, **fields)
    except (lifecycle.StaleJob, lifecycle.IllegalTransition):
        log.info("job %s: already ended, %s not recorded", job.id, target)
        return False
    return True


def _fail(config: Config, job_id: str, error: str) -> None:
    with session_scope(config.database_url) as session:
        _end(session, session.get(Job, job_id), lifecycle.FAILED, error, error=error)
    _release_upload(config, job_id)


def _release_upload(config: Config, job_id: str) -> None:
    """Remove a finished job's uploaded images unless an active job still reads them (never raises)."""
    try:
        with session_scope(config.database_url) as session:
            if release_upload(session, config.artifacts_dir, job_id):
                log.info("predict job %s: upload removed", job_id)
    except Exception:  # noqa: BLE001 - cleanup trouble must not change how the job ended
        log.exception("predict job %s: could not remove its upload", job_id)


def split_chunks(names: Sequence[str], size: int) -> list[list[str]]:
    """Consecutive chunks of at most size names."""
    size = max(1, size)
    return [list(names[i : i + size]) for i in range(0, len(names), size)]


def start_predict_job(job_id: str, worker: str, dispatch: Dispatch, config: Config | None = None) -> None:
    """Mark the job running, list its files and hand the chunks to dispatch (a chord of chunk tasks)."""
    from graft.worker.core.predict import list_input_files

    config = config or get_config()
    params = _start(config, job_id, worker)
    if params is None:
        _release_upload(config, job_id)  # cancelled while queued: its upload is no longer needed
        return
    try:
        _model_path(config, params["model_id"])
        folder, _ = input_folder(config, params)
        listing = list_input_files(folder, params.get("recursive", True))
    except (PathNotAllowed, UploadError, InputGone, OSError) as exc:
        _fail(config, job_id, str(exc))
        return
    if not listing.files:
        _fail(config, job_id, f"no files to classify in the input folder ({listing.ignored} hidden or ignored)")
        return
    chunks = split_chunks([name for name, _ in listing.files], params.get("chunk_size") or DEFAULT_CHUNK_SIZE)
    total = len(listing.files)
    with session_scope(config.database_url) as session:
        job = session.get(Job, job_id)
        job.progress = {"phase": "predicting", "files_done": 0, "files_total": total, "fraction": 0.0,
                        "eta_s": None, "chunks": len(chunks)}
        job.metrics = {"ignored_files": listing.ignored}
    log.info("predict job %s: %d files in %d chunk(s)", job_id, total, len(chunks))
    try:
        dispatch(chunks)
    except Exception as exc:  # noqa: BLE001 - broker trouble: the job must not stay running forever
        log.exception("predict job %s: could not dispatch chunks", job_id)
        _fail(config, job_id, f"could not dispatch chunks: {type(exc).__name__}: {exc}")


def _eta(job: Job, done: int, total: int) -> float | None:
    if not done or not job.started_at:
        return None
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=timezone.utc)
    elapsed = (utcnow() - started).total_seconds()
    return round(elapsed * (total - done) / done, 1)


def run_predict_chunk(job_id: str, index: int, names: list[str], worker: str,
                      config: Config | None = None) -> dict[str, Any]:
    """Classify one chunk and store its rows (replacing any from an earlier attempt); returns a small report."""
    from graft.worker.core.model_cache import default_cache

    config = config or get_config()
    with session_scope(config.database_url) as session:
        job = session.get(Job, job_id)
        if job is not None and job.cancel_requested:
            _end(session, job, lifecycle.CANCELLED, "cancelled by user")
        skipped = job is None or job.status != lifecycle.RUNNING
        if skipped:
            log.info("predict job %s: chunk %d skipped (job %s)", job_id, index, job.status if job else "gone")
        else:
            params = dict(job.params)
    if skipped:
        _release_upload(config, job_id)
        return {"chunk": index, "files": 0, "skipped": True}
    folder, roots = input_folder(config, params)
    predictor = default_cache().get(_model_path(config, params["model_id"]), params.get("precision") or "fp32",
                                    params.get("runtime"), max_pixels=config.max_image_pixels)
    rows = predictor.predict_files([(name, folder / name) for name in names], params.get("top_k", 1),
                                   params.get("threshold"), roots)
    _store_chunk(config, job_id, index, rows, worker)
    errors = sum(1 for r in rows if r["error"])
    return {"chunk": index, "files": len(rows), "errors": errors, "runtime": predictor.runtime}


def _store_chunk(config: Config, job_id: str, index: int, rows: list[dict[str, Any]], worker: str) -> None:
    with session_scope(config.database_url) as session:
        # Row lock on PostgreSQL; on SQLite the DELETE below takes the write lock, so the count is exact.
        job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
        if job is None or job.status != lifecycle.RUNNING:
            return
        session.execute(delete(PredictionResult).where(PredictionResult.job_id == job_id, PredictionResult.chunk == index))
        if rows:
            session.execute(insert(PredictionResult), [{**row, "job_id": job_id, "chunk": index, "worker": worker}
                                                       for row in rows])
        done = session.scalar(select(func.count()).where(PredictionResult.job_id == job_id))
        session.refresh(job)
        total = int((job.progress or {}).get("files_total") or done or 1)
        job.progress = {**(job.progress or {}), "files_done": done, "fraction": round(min(1.0, done / total), 4),
                        "eta_s": _eta(job, done, total)}


def result_summary(session: Any, job_id: str) -> dict[str, Any]:
    """Counts over a job's stored rows: files, per label, unknown, errors, and files per worker."""
    from graft.worker.core.predict import UNKNOWN

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


def finish_predict_job(job_id: str, config: Config | None = None) -> None:
    """The chord callback: check every file has its row, record the summary, mark the job succeeded."""
    config = config or get_config()
    try:
        _finish(config, job_id)
    finally:
        _release_upload(config, job_id)


def _finish(config: Config, job_id: str) -> None:
    with session_scope(config.database_url) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != lifecycle.RUNNING:
            return
        if job.cancel_requested:
            _end(session, job, lifecycle.CANCELLED, "cancelled by user")
            return
        summary = result_summary(session, job_id)
        summary["ignored"] = (job.metrics or {}).get("ignored_files", 0)
        total = (job.progress or {}).get("files_total")
        progress = {**(job.progress or {}), "files_done": summary["files"], "fraction": 1.0, "eta_s": 0, "phase": "done"}
        if summary["files"] != total:
            error = f"results incomplete: {summary['files']} of {total} files have a row"
            _end(session, job, lifecycle.FAILED, error, error=error, progress=progress)
            return
        message = f"{summary['files']} files, {summary['errors']} errors"
        _end(session, job, lifecycle.SUCCEEDED, message, metrics={"summary": summary}, progress=progress)


def run_predict_now(job_id: str, worker: str, config: Config | None = None) -> None:
    """Run a small predict job whole in this process: its chunks one after another, then the finish."""
    config = config or get_config()

    def inline(chunks: list[list[str]]) -> None:
        try:
            for index, names in enumerate(chunks):
                run_predict_chunk(job_id, index, names, worker, config)
        except Exception as exc:  # noqa: BLE001 - the waiting request must see a failed job, not a running one
            log.exception("predict job %s failed", job_id)
            _fail(config, job_id, f"prediction failed: {type(exc).__name__}: {exc}")
            return
        finish_predict_job(job_id, config)

    start_predict_job(job_id, worker, dispatch=inline, config=config)


def fail_predict_job(job_id: str, error: str, config: Config | None = None) -> None:
    """Mark a running predict job failed (a chunk failed for good); a finished job is left alone."""
    _fail(config or get_config(), job_id, error)
