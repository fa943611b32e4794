"""Celery tasks: thin wrappers that hand a job id to worker.jobs."""
from __future__ import annotations

from celery import chord, group

from shared.queue import PREDICT_CHUNK_TASK, PREDICT_FINISH_TASK, PREDICT_TASK, TRAIN_TASK
from worker.celery_app import app

CHUNK_RETRIES = 2  # a failed chunk runs up to 1 + CHUNK_RETRIES times before the job fails


@app.task(name=TRAIN_TASK, bind=True)
def train(self, job_id: str) -> None:  # noqa: ANN001 - Celery's bound task
    """Run training job job_id on this worker."""
    from worker.jobs import run_train_job  # imported here so the worker's main process never loads torch

    run_train_job(job_id, worker=self.request.hostname or "unknown")


@app.task(name=PREDICT_TASK, bind=True)
def predict(self, job_id: str) -> None:  # noqa: ANN001 - Celery's bound task
    """List predict job job_id's input and fan it out as a chord of chunk tasks."""
    from worker.predict_jobs import start_predict_job

    def dispatch(chunks: list[list[str]]) -> None:
        header = group(predict_chunk.s(job_id, index, names) for index, names in enumerate(chunks))
        chord(header)(predict_finish.s(job_id))

    start_predict_job(job_id, worker=self.request.hostname or "unknown", dispatch=dispatch)


class _ChunkTask(app.Task):
    """Chunk tasks retry on any error; only when the retries are spent does the job fail."""

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: object) -> None:
        from worker.predict_jobs import fail_predict_job

        job_id, index = args[0], args[1]
        attempts = self.request.retries + 1
        fail_predict_job(job_id, f"chunk {index} failed after {attempts} attempt(s): {type(exc).__name__}: {exc}")


@app.task(name=PREDICT_CHUNK_TASK, bind=True, base=_ChunkTask, ignore_result=False, autoretry_for=(Exception,),
          max_retries=CHUNK_RETRIES, retry_backoff=2, retry_jitter=False)
def predict_chunk(self, job_id: str, index: int, names: list[str]) -> dict:  # noqa: ANN001 - Celery's bound task
    """Classify chunk index of predict job job_id (a chord header task: its small report is the result)."""
    from worker.predict_jobs import run_predict_chunk

    return run_predict_chunk(job_id, index, names, worker=self.request.hostname or "unknown")


@app.task(name=PREDICT_FINISH_TASK)
def predict_finish(_reports: list, job_id: str) -> None:
    """Chord callback: every chunk is done; record the summary and mark the job succeeded."""
    from worker.predict_jobs import finish_predict_job

    finish_predict_job(job_id)
