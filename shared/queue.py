"""The Celery app on Redis (JSON only), the task names, and one queue per kind of work.

The API enqueues by task name through this module and never imports graft.worker (or torch).
Queues: "train" (long training jobs), "batch" (batch prediction, dataset inspection and model exports) and
"interactive" (the synchronous predict endpoint alone), so a 20-image request never waits behind a training job
or an export.
"""
from __future__ import annotations

import redis
from celery import Celery
from celery.result import AsyncResult

from graft.shared.config import Config

TRAIN_TASK = "graft.train"
PREDICT_TASK = "graft.predict"  # lists the input into chunk rows and sends one chunk task per row
PREDICT_CHUNK_TASK = "graft.predict_chunk"  # classifies one chunk of files; the last one ends the job
PREDICT_NOW_TASK = "graft.predict_now"  # a small predict job run whole in one task, for the synchronous endpoint
INSPECT_TASK = "graft.inspect_dataset"  # inspect an accepted dataset: ready or failed, with its report
EXPORT_TASK = "graft.export_model"  # build one download format of a trained model (the download answers 202)

QUEUE_KINDS = ("train", "batch", "interactive")
TASK_KIND = {
    TRAIN_TASK: "train",
    PREDICT_TASK: "batch", PREDICT_CHUNK_TASK: "batch", INSPECT_TASK: "batch", EXPORT_TASK: "batch",
    PREDICT_NOW_TASK: "interactive",
}


def queue_name(config: Config, kind: str) -> str:
    """The Redis queue of one kind of work: GRAFT_QUEUE plus the kind (graft.train, graft.batch, ...)."""
    if kind not in QUEUE_KINDS:
        raise ValueError(f"unknown queue kind {kind!r}; choose from {', '.join(QUEUE_KINDS)}")
    return f"{config.queue}.{kind}"


def make_celery(config: Config) -> Celery:
    """A Celery app configured for long CPU jobs whose state lives in the database, not in Celery."""
    # The result backend is only read for the synchronous predict's "done"; no job's progress depends on it.
    app = Celery("graft", broker=config.redis_url, backend=config.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        task_ignore_result=True,  # job state lives in the database, not the result backend
        task_default_queue=queue_name(config, "batch"),
        task_routes={name: {"queue": queue_name(config, kind)} for name, kind in TASK_KIND.items()},
        task_acks_late=True,  # a job is acknowledged only after it ran: a dead worker's job is redelivered
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # long jobs: do not hoard messages another worker could run
        broker_transport_options={"visibility_timeout": config.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
        result_expires=7 * 24 * 3600,
    )
    return app


def enqueue_train(app: Celery, job_id: str) -> None:
    """Send the train task for job_id (to the train queue)."""
    app.send_task(TRAIN_TASK, args=[job_id])


def enqueue_predict(app: Celery, job_id: str) -> None:
    """Send the batch predict task for job_id (to the batch queue)."""
    app.send_task(PREDICT_TASK, args=[job_id])


def enqueue_predict_chunk(app: Celery, job_id: str, index: int, countdown: float | None = None) -> None:
    """Send chunk index of predict job job_id (to the batch queue), after countdown seconds if given."""
    app.send_task(PREDICT_CHUNK_TASK, args=[job_id, index], countdown=countdown)


def enqueue_predict_now(app: Celery, job_id: str) -> AsyncResult:
    """Send a small predict job to the interactive queue; its result says when it is done."""
    return app.send_task(PREDICT_NOW_TASK, args=[job_id])


def enqueue_inspection(app: Celery, dataset_id: str) -> None:
    """Send the inspection of dataset_id (to the batch queue)."""
    app.send_task(INSPECT_TASK, args=[dataset_id])


def enqueue_export(app: Celery, model_id: str, fmt: str) -> None:
    """Send the export of model_id in format fmt (to the batch queue: no client holds a connection for it)."""
    app.send_task(EXPORT_TASK, args=[model_id, fmt])


def redis_ping(url: str, timeout: float = 1.0) -> bool:
    """True when Redis at url answers PING."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False
