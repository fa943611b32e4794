"""Job runners: load the job by id, call the pure core, record state. Sessions stay short."""
from __future__ import annotations

import logging
import time
from typing import Any

from shared import jobs as sm
from shared.config import Config, get_config
from shared.db import session_scope
from shared.models import Job, TrainedModel, new_id
from shared.storage import PathNotAllowed, job_dir, model_dir, resolve_under_roots

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0


class _ProgressWriter:
    """Turns the core's progress callbacks into (throttled) job updates."""

    def __init__(self, config: Config, job_id: str) -> None:
        self.config, self.job_id, self.last = config, job_id, 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        if event["phase"] == "loading":
            if now - self.last < PROGRESS_EVERY_S and event["done"] != event["total"]:
                return
            progress = {"phase": "loading", "files_done": event["done"], "files_total": event["total"]}
            metrics = None
        else:
            progress = {
                "phase": "training", "epoch": event["epoch"], "epochs": event["epochs"],
                "fraction": round(event["epoch"] / event["epochs"], 4), "eta_s": event["eta_s"],
            }
            metrics = {"history": event["history"], "best_val_acc": event["best_val_acc"]}
        self.last = now
        with session_scope(self.config.database_url) as session:
            job = session.get(Job, self.job_id)
            if job is None or job.status != sm.RUNNING:
                return
            job.progress = {**(job.progress or {}), **progress}
            if metrics is not None:
                job.metrics = {**(job.metrics or {}), **metrics}


def _start(config: Config, job_id: str, worker: str) -> dict[str, Any] | None:
    """Mark the job running and return its params, or None when it is not ours to run."""
    with session_scope(config.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s: not in the database, message dropped", job_id)
            return None
        if job.status != sm.QUEUED:
            log.info("job %s: status %s, nothing to do", job_id, job.status)
            return None
        sm.transition(session, job, sm.RUNNING, message=f"started on {worker}", worker=worker)
        return dict(job.params)


def _finish(config: Config, job_id: str, target: str, message: str | None, **fields: Any) -> None:
    with session_scope(config.database_url) as session:
        job = session.get(Job, job_id)
        sm.transition(session, job, target, message=message, **fields)


def run_train_job(job_id: str, worker: str, config: Config | None = None) -> None:
    """Run one training job end to end and record how it ended."""
    from worker.core.backbones import WeightsNotFound
    from worker.core.dataset import DatasetError
    from worker.core.train import TrainSpec, fit

    config = config or get_config()
    params = _start(config, job_id, worker)
    if params is None:
        return
    model_id = new_id()
    try:
        data_dir = resolve_under_roots(params.pop("data_dir"), config.data_roots)
        spec = TrainSpec(**params)
        result = fit(
            data_dir, spec, job_dir(config.artifacts_dir, job_id), model_dir(config.artifacts_dir, model_id),
            on_progress=_ProgressWriter(config, job_id), resnet18_weights=config.resnet18_weights,
        )
    except (DatasetError, WeightsNotFound, PathNotAllowed) as exc:
        _finish(config, job_id, sm.FAILED, str(exc), error=str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - any crash must end the job with a readable reason
        log.exception("job %s crashed", job_id)
        error = f"training crashed: {type(exc).__name__}: {exc}"
        _finish(config, job_id, sm.FAILED, error, error=error)
        return
    metrics = {**result.metrics, "skipped_files": result.skipped_files}
    model_metrics = {k: result.metrics[k] for k in ("val_acc", "confusion_matrix", "per_class", "best_epoch")}
    with session_scope(config.database_url) as session:
        job = session.get(Job, job_id)
        session.add(TrainedModel(
            id=model_id, job_id=job_id, backbone=spec.backbone, classes=result.classes,
            image_size=spec.image_size, metrics=model_metrics, path=str(result.model_path),
        ))
        progress = {**(job.progress or {}), "fraction": 1.0, "eta_s": 0, "phase": "done"}
        sm.transition(session, job, sm.SUCCEEDED, message=f"model {model_id}", metrics=metrics, progress=progress)
