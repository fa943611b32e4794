"""Celery tasks: thin wrappers that hand a job id to worker.jobs."""
from __future__ import annotations

from shared.queue import TRAIN_TASK
from worker.celery_app import app


@app.task(name=TRAIN_TASK, bind=True)
def train(self, job_id: str) -> None:  # noqa: ANN001 - Celery's bound task
    """Run training job job_id on this worker."""
    from worker.jobs import run_train_job  # imported here so the worker's main process never loads torch

    run_train_job(job_id, worker=self.request.hostname or "unknown")
