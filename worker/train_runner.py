"""Training job runner: claim the job, keep its lease alive, call the pure core, record how it ended."""
from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from typing import Any

from graft.shared import lifecycle
from graft.shared.config import Config, get_config
from graft.shared.db import session_scope, with_db_retry
from graft.shared.models import DatasetRecord, Job, TrainedModel, new_id
from graft.shared.storage import PathNotAllowed, job_dir, model_dir, resolve_under_roots, tree_bytes
from graft.shared.thumbs import write_predictions
from graft.worker.label_audit import record_label_audit
from graft.worker.lease import Heartbeat, beat_interval, holder_alive

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0


class Lease:
    """This process's hold on one job: renewed by a heartbeat thread; tells the core when to stop."""

    def __init__(self, config: Config, job: Job) -> None:
        self.config, self.job_id = config, job.id
        self.worker, self.pid, self.attempt = job.worker, job.worker_pid, job.attempts
        self.lost = self.cancelled = False
        self._last_progress = 0.0
        self._heartbeat = Heartbeat(self._renew, beat_interval(config.lease_s), f"job {job.id}")

    def __enter__(self) -> "Lease":
        self._heartbeat.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._heartbeat.__exit__(*exc)

    def _renew(self) -> bool:
        # The same round trip tells us whether a cancel was asked for. A cancelled job keeps its lease until the
        # core stops at its next batch and records "cancelled"; a lost one stops renewing.
        with session_scope(self.config.database_url) as session:
            held, cancel = lifecycle.renew_lease(session, self.job_id, self.worker, self.pid, self.attempt,
                                                 self.config.lease_s)
        self.lost, self.cancelled = self.lost or not held, self.cancelled or cancel
        return not self.lost

    def should_stop(self) -> bool:
        """True once the job was cancelled or taken from us."""
        return self.lost or self.cancelled

    def progress(self, event: dict[str, Any]) -> None:
        """Turn the core's progress callbacks into (throttled) job updates, while we hold the job."""
        now = time.monotonic()
        if event["phase"] in ("loading", "caching"):  # before the first epoch: count images instead
            if now - self._last_progress < PROGRESS_EVERY_S and event["done"] != event["total"]:
                return
            values: dict[str, Any] = {"progress": {
                "phase": event["phase"], "done": event["done"], "total": event["total"],
                "epoch": 0, "epochs": None, "fraction": 0.0, "eta_s": None}}
        else:
            values = {
                "progress": {"phase": "training", "epoch": event["epoch"], "epochs": event["epochs"],
                             "fraction": round(event["epoch"] / event["epochs"], 4), "eta_s": event["eta_s"]},
                "metrics": {"history": event["history"], "best_val_acc": event["best_val_acc"]},
            }
        self._last_progress = now

        def write() -> None:
            with session_scope(self.config.database_url) as session:
                lifecycle.update_held(session, self.job_id, self.worker, self.pid, self.attempt, **values)

        with_db_retry(write, self.config.lease_s, f"job {self.job_id}: progress")


def _claim(config: Config, job_id: str, worker: str) -> Job | None:
    try:
        with session_scope(config.database_url) as session:
            return lifecycle.claim(session, job_id, worker, os.getpid(), config.lease_s, config.max_attempts,
                                   holder_alive(worker))
    except lifecycle.StaleJob:
        log.info("job %s: another worker claimed it first", job_id)
        return None


def _finish(config: Config, lease: Lease, target: str, message: str, **fields: Any) -> bool:
    """Record the end of our attempt (through a database outage); False if the job is no longer ours."""
    return with_db_retry(lambda: _record_end(config, lease, target, message, dict(fields)), config.lease_s,
                         f"job {lease.job_id}: {target}")


def _record_end(config: Config, lease: Lease, target: str, message: str, fields: dict[str, Any]) -> bool:
    with session_scope(config.database_url) as session:
        job = session.get(Job, lease.job_id)
        if job.status != lifecycle.RUNNING or job.attempts != lease.attempt:
            log.warning("job %s: no longer ours (now %s, attempt %s); result dropped", job.id, job.status, job.attempts)
            return False
        model = fields.pop("model", None)
        if model is not None:
            model.owner_id = job.owner_id  # the model is its training job's owner's
            session.add(model)
        try:
            lifecycle.transition(session, job, target, message=message, **fields)
        except lifecycle.StaleJob:
            return False
    return True


def job_data(config: Config, data_dir: str, dataset_id: str | None) -> tuple[Path, tuple[Path, ...]]:
    """A training job's folder and the roots every file it reads must resolve into (symlinks followed).

    A data_dir job reads inside the data roots only; a dataset_id job only inside that dataset's own folder, so a
    symlink in one user's data can never lead to another user's uploaded dataset."""
    if dataset_id is None:
        return resolve_under_roots(data_dir, config.data_roots), config.data_roots
    folder = resolve_under_roots(data_dir, config.train_roots)  # an upload's folder, or a registered server folder
    return folder, (folder,)


def model_name(config: Config, given: str | None, dataset_id: str | None, data_dir: Path, backbone: str) -> str:
    """The model's name: the one given at training, else its dataset's (or folder's) name and its backbone."""
    if given:
        return given
    source = data_dir.name
    if dataset_id is not None:
        with session_scope(config.database_url) as session:
            row = session.get(DatasetRecord, dataset_id)
            source = row.name if row is not None else source
    return f"{source} · {backbone}"[:200]


def run_train_job(job_id: str, worker: str, config: Config | None = None) -> None:
    """Run (or resume) one training job and record how it ended; a no-op when it is not ours to run."""
    from graft.worker.core.backbones import WeightsNotFound
    from graft.worker.core.dataset import DatasetError
    from graft.worker.core.stop import Stopped
    from graft.worker.core.train import Caching, TrainSpec, fit

    config = config or get_config()
    job = _claim(config, job_id, worker)
    if job is None:
        return
    params = dict(job.params)
    model_id = new_id()
    with Lease(config, job) as lease:
        try:
            data_dir, roots = job_data(config, params.pop("data_dir"), params.get("dataset_id"))
            dataset_id = params.pop("dataset_id", None)
            params.pop("callback_url", None)  # a job option (sent by the webhook sender), not a hyper-parameter
            given_name = params.pop("model_name", None)  # a job option too: the model's, not the training's
            spec = TrainSpec(**params)
            caching = Caching.on_disk(config.worker_cache_dir, config.cache_mb)
            result = fit(
                data_dir, spec, job_dir(config.artifacts_dir, job_id), model_dir(config.artifacts_dir, model_id),
                on_progress=lease.progress, should_stop=lease.should_stop, resnet18_weights=config.resnet18_weights,
                max_pixels=config.max_image_pixels, roots=roots, caching=caching,
            )
        except Stopped:
            if lease.cancelled:
                _finish(config, lease, lifecycle.CANCELLED, "cancelled by user; last checkpoint kept")
            else:
                log.warning("job %s: lease lost, stopping", job_id)
            return
        except (DatasetError, WeightsNotFound, PathNotAllowed) as exc:
            _finish(config, lease, lifecycle.FAILED, str(exc), error=str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - any crash must end the job with a readable reason
            log.exception("job %s crashed", job_id)
            error = f"training crashed: {type(exc).__name__}: {exc}"
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                error = f"the server's artifacts disk is full, no checkpoint or model could be written ({exc.strerror})"
            _finish(config, lease, lifecycle.FAILED, error, error=error)
            return
    try:  # before the model's row exists: a model with a row has its out-of-sample predictions, unless the disk is full
        write_predictions(model_dir(config.artifacts_dir, model_id), result.predictions, result.val_images)
    except OSError as exc:
        log.warning("job %s: out-of-sample predictions not stored (%s)", job_id, exc)
    metrics = {**result.metrics, "skipped_files": result.skipped_files}
    model = TrainedModel(
        id=model_id, job_id=job_id, backbone=result.backbone, classes=result.classes, image_size=result.image_size,
        name=model_name(config, given_name, dataset_id, data_dir, result.backbone), dataset_id=dataset_id,
        metrics={k: result.metrics[k] for k in ("val_acc", "confusion_matrix", "per_class", "best_epoch", "calibration",
                                                "ood", "selected", "estimate", "estimated_acc", "refit",
                                                "train_images", "val_images")
                 if k in result.metrics},
        path=str(result.model_path), size_bytes=tree_bytes(model_dir(config.artifacts_dir, model_id)),
    )
    ran = len(result.metrics.get("history") or [])  # fewer than spec.epochs after an early stop
    progress = {"phase": "done", "epoch": ran, "epochs": spec.epochs, "fraction": 1.0, "eta_s": 0}
    if _finish(config, lease, lifecycle.SUCCEEDED, f"model {model_id}", model=model, metrics=metrics,
               progress=progress):
        record_label_audit(config, dataset_id, result.mislabel_issue(job_id), job_id)
