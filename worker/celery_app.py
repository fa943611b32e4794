"""The worker's Celery app. The main process never touches torch: each pool child sets its own threads."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

from celery.signals import task_postrun, task_prerun, worker_process_init, worker_ready, worker_shutting_down

from graft.shared.config import Config, get_config
from graft.shared.logs import JOB_ID, start_job_log_capture
from graft.shared.queue import PREDICT_CHUNK_TASK, PREDICT_NOW_TASK, PREDICT_TASK, TRAIN_TASK, make_celery

log = logging.getLogger(__name__)

app = make_celery(get_config())
app.conf.include = ["graft.worker.tasks"]

# Set by `graft worker` before the pool forks; children inherit it. 0 means "cores / concurrency".
TORCH_THREADS = {"n": 0}
_SWEEP_STOP = threading.Event()


@worker_process_init.connect
def _init_child(**_kwargs: object) -> None:
    # torch is imported and configured only here, in the forked child: a parent that ran a torch op
    # would leave its children hanging in their first parallel op.
    import torch

    n = TORCH_THREADS["n"] or max(1, (os.cpu_count() or 1) // max(1, app.conf.worker_concurrency or 1))
    torch.set_num_threads(n)
    log.info("worker child %d: torch threads = %d", os.getpid(), n)
    # A job's own log lines also go to the database (GET /api/v1/jobs/<id>/logs); only children run jobs.
    config = get_config()
    artifacts = Path(config.artifacts_dir)
    start_job_log_capture(config.database_url, f"{socket.gethostname()}:{os.getpid()}",
                          (str(artifacts.absolute()), str(artifacts.resolve())))


# The tasks whose first argument is a job id: every log line such a task writes is then about that job.
_JOB_TASKS = frozenset({TRAIN_TASK, PREDICT_TASK, PREDICT_CHUNK_TASK, PREDICT_NOW_TASK})
_JOB_TOKENS: dict[str, object] = {}


@task_prerun.connect
def _enter_job(task_id: str = "", task: object = None, args: tuple = (), **_kwargs: object) -> None:
    if getattr(task, "name", "") in _JOB_TASKS and args and isinstance(args[0], str):
        _JOB_TOKENS[task_id] = JOB_ID.set(args[0])


@task_postrun.connect
def _leave_job(task_id: str = "", **_kwargs: object) -> None:
    token = _JOB_TOKENS.pop(task_id, None)
    if token is not None:
        JOB_ID.reset(token)


def sweep_forever(config: Config, stop: threading.Event) -> None:
    """Every sweep interval until stop is set: recover jobs and predict chunks whose lease expired, re-send queued
    jobs nobody took and the pending chunks of stalled predict jobs; every GRAFT_GC_INTERVAL_SECONDS, the
    retention pass (graft.shared.retention)."""
    from graft.shared.chunks import resend_stalled, sweep_chunks
    from graft.shared.db import session_scope
    from graft.shared.lifecycle import resend_stale_queued, sweep_expired
    from graft.shared.queue import enqueue_predict, enqueue_predict_chunk, enqueue_train

    send = {"train": enqueue_train, "predict": enqueue_predict}
    last_gc = None
    while not stop.wait(config.sweep_interval_s):
        try:
            with session_scope(config.database_url) as session:
                requeued = sweep_expired(session, config.max_attempts)
            for job_id, kind in requeued:
                log.warning("job %s: lease expired, re-queued", job_id, extra={"job_id": job_id})
                send[kind](app, job_id)
            with session_scope(config.database_url) as session:
                stale = resend_stale_queued(session, config.requeue_s)
            for job_id, kind in stale:
                log.warning("job %s: queued for %d s with no taker, message sent again", job_id, config.requeue_s,
                            extra={"job_id": job_id})
                send[kind](app, job_id)
            with session_scope(config.database_url) as session:
                lost = sweep_chunks(session, config.max_attempts) + resend_stalled(session, config.requeue_s)
            for job_id, index in lost:
                enqueue_predict_chunk(app, job_id, index)
        except Exception:  # noqa: BLE001 - the sweeper must outlive database or broker hiccups
            log.exception("lease sweep failed")
        if config.gc_interval_s and (last_gc is None or time.monotonic() - last_gc >= config.gc_interval_s):
            last_gc = time.monotonic()
            _collect_garbage(config)


def _collect_garbage(config: Config) -> None:
    from graft.shared.db import session_scope
    from graft.shared.retention import collect

    try:
        with session_scope(config.database_url) as session:
            report = collect(session, config)
        if report.removed:
            log.info("retention pass: removed %d folder(s), %d bytes", len(report.removed), report.freed_bytes)
    except Exception:  # noqa: BLE001 - a full or read-only disk must not stop lease sweeping
        log.exception("retention pass failed")


@worker_ready.connect
def _start_sweeper(**_kwargs: object) -> None:
    # Every worker sweeps, so recovery needs no extra process; claims are compare-and-set, so two
    # sweepers never re-queue the same job twice. Runs in the main process: database and broker only.
    threading.Thread(target=sweep_forever, args=(get_config(), _SWEEP_STOP), name="lease-sweeper", daemon=True).start()
    # Job callbacks go out from here too (why a thread and not a task: graft.worker.webhooks).
    from graft.worker.webhooks import deliver_forever

    threading.Thread(target=deliver_forever, args=(get_config(), _SWEEP_STOP), name="webhooks", daemon=True).start()


@worker_shutting_down.connect
def _stop_sweeper(**_kwargs: object) -> None:
    _SWEEP_STOP.set()
