"""The Celery app on Redis (JSON only), shared by the API (to enqueue) and the workers (to run)."""
from __future__ import annotations

import redis
from celery import Celery

from shared.config import Config

TRAIN_TASK = "graft.train"
PREDICT_TASK = "graft.predict"  # lists the input and fans out the chunks
PREDICT_CHUNK_TASK = "graft.predict_chunk"  # classifies one chunk of files (a chord header task)
PREDICT_FINISH_TASK = "graft.predict_finish"  # the chord callback: summary, job succeeded


def make_celery(config: Config) -> Celery:
    """A Celery app configured for long CPU jobs whose state lives in the database, not in Celery."""
    # The result backend only carries chord bookkeeping for predict jobs; every other task ignores results.
    app = Celery("graft", broker=config.redis_url, backend=config.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # job state lives in the database, not the result backend
        task_default_queue=config.queue,
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
    """Send the train task for job_id by name, so the API never imports the worker (or torch)."""
    app.send_task(TRAIN_TASK, args=[job_id])


def enqueue_predict(app: Celery, job_id: str) -> None:
    """Send the predict task for job_id by name (the API never imports the worker)."""
    app.send_task(PREDICT_TASK, args=[job_id])


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
