"""Celery tasks: thin wrappers that hand an id to a runner (train_runner, predict_runner, inspect_runner).

Each task is routed to its queue by graft.shared.queue (train, batch or interactive).
"""
from __future__ import annotations

from graft.shared.queue import (
    EXPORT_TASK, INSPECT_TASK, PREDICT_CHUNK_TASK, PREDICT_NOW_TASK, PREDICT_TASK, TRAIN_TASK, enqueue_predict_chunk,
)
from graft.worker.celery_app import app


@app.task(name=TRAIN_TASK, bind=True)
def train(self, job_id: str) -> None:  # noqa: ANN001 - Celery's bound task
    """Run training job job_id on this worker."""
    from graft.worker.train_runner import run_train_job  # imported here so the worker's main process never loads torch

    run_train_job(job_id, worker=self.request.hostname or "unknown")


@app.task(name=PREDICT_TASK, bind=True)
def predict(self, job_id: str) -> None:  # noqa: ANN001 - Celery's bound task
    """List predict job job_id's input into chunk rows and send one chunk task per row."""
    from graft.worker.predict_runner import start_predict_job

    def send(indexes: list[int]) -> None:
        for index in indexes:
            enqueue_predict_chunk(app, job_id, index)

    start_predict_job(job_id, worker=self.request.hostname or "unknown", send=send)


@app.task(name=PREDICT_CHUNK_TASK, bind=True)
def predict_chunk(self, job_id: str, index: int, *_names: object) -> dict:  # noqa: ANN001 - Celery's bound task
    """Classify chunk index of predict job job_id (its files are in the database); send it again after an error.

    _names takes the file names that chunk messages carried before chunks were stored in the database.
    """
    from graft.worker.predict_runner import run_predict_chunk

    report = run_predict_chunk(job_id, index, worker=self.request.hostname or "unknown")
    if "retry_in" in report:
        enqueue_predict_chunk(app, job_id, index, countdown=report["retry_in"])
    return report


@app.task(name=PREDICT_NOW_TASK, bind=True)
def predict_now(self, job_id: str) -> None:  # noqa: ANN001 - Celery's bound task
    """Run a small predict job whole, in this task (the synchronous endpoint waits for it)."""
    from graft.worker.predict_runner import run_predict_now

    run_predict_now(job_id, worker=self.request.hostname or "unknown")


@app.task(name=INSPECT_TASK)
def inspect_dataset(dataset_id: str) -> None:
    """Inspect an accepted dataset: it becomes ready or failed, with its report."""
    from graft.worker.inspect_runner import run_inspection

    run_inspection(dataset_id)


@app.task(name=EXPORT_TASK)
def export_model(model_id: str, fmt: str) -> None:
    """Build one download format of a trained model and cache it next to the model."""
    from graft.worker.export_runner import run_export

    run_export(model_id, fmt)
