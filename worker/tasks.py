"""Celery tasks: thin wrappers that hand an id to a runner (train_runner, predict_runner, inspect_runner).

Each task is routed to its queue by graft.shared.queue (train, batch or interactive).
"""
from __future__ import annotations

from celery import chord, group

from graft.shared.queue import (
    EXPORT_TASK, INSPECT_TASK, PREDICT_CHUNK_TASK, PREDICT_FINISH_TASK, PREDICT_NOW_TASK, PREDICT_TASK, TRAIN_TASK,
)
from graft.worker.celery_app import app

CHUNK_RETRIES = 2  # a failed chunk runs up to 1 + CHUNK_RETRIES times before the job fails


@app.task(name=TRAIN_TASK, bind=True)
def train(self, job_id: str) -> None:  # noqa: ANN001 - Celery's bound task
    """Run training job job_id on this worker."""
    from graft.worker.train_runner import run_train_job  # imported here so the worker's main process never loads torch

    run_train_job(job_id, worker=self.request.hostname or "unknown")


@app.task(name=PREDICT_TASK, bind=True)
def predict(self, job_id: str) -> None:  # noqa: ANN001 - Celery's bound task
    """List predict job job_id's input and fan it out as a chord of chunk tasks."""
    from graft.worker.predict_runner import start_predict_job

    def dispatch(chunks: list[list[str]]) -> None:
        header = group(predict_chunk.s(job_id, index, names) for index, names in enumerate(chunks))
        chord(header)(predict_finish.s(job_id))

    start_predict_job(job_id, worker=self.request.hostname or "unknown", dispatch=dispatch)


class _ChunkTask(app.Task):
    """Chunk tasks retry on any error; only when the retries are spent does the job fail."""

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: object) -> None:
        from graft.worker.predict_runner import fail_predict_job

        job_id, index = args[0], args[1]
        attempts = self.request.retries + 1
        fail_predict_job(job_id, f"chunk {index} failed after {attempts} attempt(s): {type(exc).__name__}: {exc}")


@app.task(name=PREDICT_CHUNK_TASK, bind=True, base=_ChunkTask, ignore_result=False, autoretry_for=(Exception,),
          max_retries=CHUNK_RETRIES, retry_backoff=2, retry_jitter=False)
def predict_chunk(self, job_id: str, index: int, names: list[str]) -> dict:  # noqa: ANN001 - Celery's bound task
    """Classify chunk index of predict job job_id (a chord header task: its small report is the result)."""
    from graft.worker.predict_runner import run_predict_chunk

    return run_predict_chunk(job_id, index, names, worker=self.request.hostname or "unknown")


@app.task(name=PREDICT_FINISH_TASK)
def predict_finish(_reports: list, job_id: str) -> None:
    """Chord callback: every chunk is done; record the summary and mark the job succeeded."""
    from graft.worker.predict_runner import finish_predict_job

    finish_predict_job(job_id)


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
