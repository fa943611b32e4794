"""Predict job runner: claim the job with a lease, list its input into chunk rows, send the chunks.

The job's lease covers the listing only; once the chunks are written and sent it is cleared and each chunk's own
lease (graft.worker.predict_chunks, graft.shared.chunks) takes over. Tasks call in here with ids only; the pure
core (worker.core.predict) lists and classifies.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Sequence

from graft.shared import chunks, lifecycle
from graft.shared.config import Config, get_config
from graft.shared.db import session_scope
from graft.shared.models import Job
from graft.shared.storage import PathNotAllowed
from graft.shared.uploads import UploadError
from graft.worker.lease import Heartbeat, beat_interval, holder_alive
from graft.worker.predict_chunks import run_predict_chunk
from graft.worker.predict_common import InputGone, fail_job, input_folder, model_path, release_job_upload

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 256
Send = Callable[[list[int]], None]
Held = tuple[str, str, int, int]  # job id, worker, pid, attempt: the compare-and-set key of the job's lease

__all__ = ["DEFAULT_CHUNK_SIZE", "run_predict_chunk", "run_predict_now", "split_chunks", "start_predict_job"]


def split_chunks(names: Sequence[str], size: int) -> list[list[str]]:
    """Consecutive chunks of at most size names."""
    size = max(1, size)
    return [list(names[i : i + size]) for i in range(0, len(names), size)]


def _claim(config: Config, job_id: str, worker: str) -> Job | None:
    """The job, now running with our lease, or None when it is not ours to list."""
    try:
        with session_scope(config.database_url) as session:
            job = session.get(Job, job_id)
            if (job is not None and job.status == lifecycle.RUNNING and job.lease_expires_at is None
                    and chunks.has_chunks(session, job_id)):
                log.info("predict job %s: already listed and sent, duplicate message dropped", job_id)
                return None
            return lifecycle.claim(session, job_id, worker, os.getpid(), config.lease_s, config.max_attempts,
                                   holder_alive(worker))
    except lifecycle.StaleJob:
        log.info("predict job %s: another worker claimed it first", job_id)
        return None


def _renew(config: Config, held: Held) -> bool:
    with session_scope(config.database_url) as session:
        kept, _cancel = lifecycle.renew_lease(session, *held, config.lease_s)
        return kept


def _list(config: Config, held: Held, params: dict[str, Any]) -> list[int] | None:
    """Write the job's chunk rows (or find those an earlier attempt wrote); their indexes, or None when it ended."""
    from graft.worker.core.predict import list_input_files

    job_id = held[0]
    with session_scope(config.database_url) as session:
        if chunks.has_chunks(session, job_id):  # an earlier attempt wrote them and died before sending them all
            return chunks.pending_indexes(session, job_id)
    try:
        model_path(config, params["model_id"])
        folder, _ = input_folder(config, params)
        listing = list_input_files(folder, params.get("recursive", True))
    except (PathNotAllowed, UploadError, InputGone, OSError) as exc:
        fail_job(config, job_id, str(exc))
        return None
    if not listing.files:
        fail_job(config, job_id, f"no files to classify in the input folder ({listing.ignored} hidden or ignored)")
        return None
    names = split_chunks([name for name, _ in listing.files], params.get("chunk_size") or DEFAULT_CHUNK_SIZE)
    total = len(listing.files)
    progress = {"phase": "predicting", "files_done": 0, "files_total": total, "fraction": 0.0, "eta_s": None,
                "chunks": len(names)}
    with session_scope(config.database_url) as session:
        # The rows go in only while we still hold the job: a lister that lost its lease writes nothing.
        if not lifecycle.update_held(session, *held, progress=progress, metrics={"ignored_files": listing.ignored,
                                                                          "non_utf8_names": listing.non_utf8}):
            session.rollback()
            log.warning("predict job %s: no longer ours, listing dropped", job_id)
            return None
        log.info("predict job %s: %d files in %d chunk(s)", job_id, total, len(names))
        return chunks.create_chunks(session, job_id, names)


def start_predict_job(job_id: str, worker: str, send: Send, config: Config | None = None) -> None:
    """Claim the job, list its files into chunk rows and send them (send gets their indexes), holding its lease."""
    config = config or get_config()
    job = _claim(config, job_id, worker)
    if job is None:
        release_job_upload(config, job_id)  # cancelled or failed before it started: its upload is not needed
        return
    held: Held = (job.id, job.worker, job.worker_pid, job.attempts)
    with Heartbeat(lambda: _renew(config, held), beat_interval(config.lease_s), f"list-{job_id[:8]}"):
        indexes = _list(config, held, dict(job.params))
        if indexes is None:  # failed, or no longer ours (a cancel, a sweep): the upload may no longer be needed
            release_job_upload(config, job_id)
            return
        try:
            send(indexes)
        except Exception:  # noqa: BLE001 - broker trouble: the rows are written, the sweep sends them again
            log.exception("predict job %s: could not send its chunks; the sweep sends them after "
                          "GRAFT_REQUEUE_SECONDS", job_id)
    with session_scope(config.database_url) as session:
        # Listed and sent: from here the chunks' leases carry the job, and a duplicate of this message does nothing.
        lifecycle.update_held(session, *held, lease_expires_at=None, heartbeat_at=None)


def run_predict_now(job_id: str, worker: str, config: Config | None = None) -> None:
    """Run a small predict job whole in this process: the listing, then each chunk (retried after an error)."""
    config = config or get_config()
    indexes: list[int] = []
    start_predict_job(job_id, worker, send=indexes.extend, config=config)
    for index in indexes:
        report = run_predict_chunk(job_id, index, worker, config)
        while "retry_in" in report:
            time.sleep(report["retry_in"])
            report = run_predict_chunk(job_id, index, worker, config)
