"""The one place that turns rows into API resources: jobs, job events, models, datasets, prediction rows.

Timestamps are ISO 8601 with a UTC offset (SQLite hands back naive datetimes; all of ours are UTC). Text a worker
wrote (a job's error, event messages, log lines, a dataset's error) is shown masked (public_text): the folders
Graft chose and the workers' host names are the server's business; the database keeps the raw text for operators.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from graft.shared.accuracy import accuracy_of
from graft.shared.config import get_config
from graft.shared.logs import ARTIFACTS, mask_private
from graft.shared.models import (
    SERVER_PATH, DatasetRecord, Job, JobEvent, JobLogLine, PredictionResult, TrainedModel, WebhookDelivery,
)
from graft.shared.webhooks import public_attempt


def as_utc(value: datetime | None) -> datetime | None:
    """A stored datetime as timezone-aware UTC (SQLite returns naive ones)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with offset, or None."""
    value = as_utc(value)
    return value.isoformat() if value else None


def serialize_job(job: Job, model_id: str | None = None) -> dict[str, Any]:
    """The job resource as the API shows it."""
    progress = {"epoch": 0, "epochs": None, "fraction": 0.0, "eta_s": None}
    progress.update(job.progress or {})
    metrics = {"history": [], "best_val_acc": None, "skipped_files": []}
    metrics.update(job.metrics or {})
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "params": public_params(job.params or {}),
        "progress": progress,
        "metrics": metrics,
        "accuracy": _accuracy(metrics) if job.status == "succeeded" else None,
        "model_id": model_id,
        "error": public_text(job.error, job.worker),
        "worker": public_worker(job.worker),
        "attempts": job.attempts,
        "cancel_requested": bool(job.cancel_requested),
        "lease_expires_at": iso(job.lease_expires_at),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "callback": serialize_callback(job),
    }


# A worker named in Graft's own messages: "attempt 2 on w1@host (pid 7)", "lease of w1@host (pid 7) expired".
_WORKER_IN_TEXT = re.compile(r"@([^\s@()]+) \(pid \d+\)")


def _hosts(names: Iterable[str | None]) -> set[str]:
    """The host names in worker names: Celery's "name@host" (job holders) or "host:pid" (log lines)."""
    hosts = set()
    for name in filter(None, names):
        host = name.rpartition("@")[2].partition(":")[0] if "@" in name else name.partition(":")[0]
        if host:
            hosts.add(host)
    return hosts


def public_text(text: str | None, *workers: str | None) -> str | None:
    """text as users see it: Graft's folders (artifacts, the worker cache) and worker host names (those of workers,
    and any that Graft's own messages name) masked."""
    if not text:
        return text
    config = get_config()
    folders = {str(p): ARTIFACTS for d in (config.artifacts_dir, config.worker_cache_dir)
               for p in (d.absolute(), d.resolve())}
    return mask_private(text, folders, _hosts([*workers, *(f"@{h}" for h in _WORKER_IN_TEXT.findall(text))]))


def public_worker(name: str | None) -> str | None:
    """A worker's name without its host: "w1@<host>", "<host>:4242"."""
    return public_text(name, name) if name else name


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """A job's params without server-internal paths: a dataset_id job's data_dir is Graft's own folder."""
    if params.get("dataset_id") is not None:
        return {k: v for k, v in params.items() if k != "data_dir"}
    return params


def serialize_callback(job: Job) -> dict[str, Any] | None:
    """The job's callback and its delivery attempts (the latest ones), or None without a callback_url."""
    url = (job.params or {}).get("callback_url")
    if not url:
        return None
    session = object_session(job)
    delivery = session.scalar(select(WebhookDelivery).where(WebhookDelivery.job_id == job.id)) if session else None
    if delivery is None:  # the job has not ended yet
        return {"url": url, "state": "waiting", "delivered_at": None, "next_attempt_at": None, "attempts": []}
    state = "delivered" if delivery.delivered_at else "pending" if delivery.next_at else "failed"
    return {"url": url, "state": state, "delivered_at": iso(delivery.delivered_at),
            "next_attempt_at": iso(delivery.next_at) if state == "pending" else None,
            "attempts": [public_attempt(entry) for entry in delivery.log or []]}


def model_ids_for(session: Session, job_ids: list[str]) -> dict[str, str]:
    """Map job id → model id for the given jobs (one query)."""
    if not job_ids:
        return {}
    rows = session.execute(select(TrainedModel.job_id, TrainedModel.id).where(TrainedModel.job_id.in_(job_ids)))
    return {job_id: model_id for job_id, model_id in rows}


def serialize_event(event: JobEvent) -> dict[str, Any]:
    """One recorded state transition."""
    return {"from": event.from_status, "to": event.to_status, "message": public_text(event.message, event.job.worker),
            "at": iso(event.created_at)}


def serialize_log_line(line: JobLogLine) -> dict[str, Any]:
    """One line a worker logged while running a job."""
    return {"id": line.id, "at": iso(line.at), "level": line.level, "logger": line.logger,
            "worker": public_worker(line.worker), "message": public_text(line.message, line.worker)}


def serialize_model(model: TrainedModel) -> dict[str, Any]:
    """The model resource as the API shows it (no server path: a model leaves the server through /download)."""
    return {
        "id": model.id,
        "name": model.name or f"{model.backbone} {model.id[:8]}",
        "job_id": model.job_id,
        "dataset_id": model.dataset_id,
        "backbone": model.backbone,
        "classes": model.classes,
        "image_size": model.image_size,
        "metrics": model.metrics,
        "accuracy": _accuracy(model.metrics),
        "created_at": iso(model.created_at),
    }


def _accuracy(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    accuracy = accuracy_of(metrics)
    return accuracy.to_dict() if accuracy else None


def serialize_dataset(dataset: DatasetRecord, full: bool = True) -> dict[str, Any]:
    """The dataset resource as the API shows it (the list leaves out the per-file details)."""
    report = dataset.report or {}
    issues = report.get("issues", [])
    out: dict[str, Any] = {
        "id": dataset.id, "name": dataset.name, "source": dataset.source, "status": dataset.status,
        "classes": dataset.classes, "num_images": dataset.num_images, "has_errors": dataset.has_errors,
        "error": public_text(dataset.error),
    }
    if full:
        out.update(issues=issues, conversions=report.get("conversions", {}), layout=report.get("layout"),
                   splits=report.get("splits"), num_files=report.get("num_files"), size_bytes=dataset.size_bytes,
                   thumbnails=report.get("thumbnails", {}))
        if dataset.source == SERVER_PATH:  # the caller's own folder; an upload's folder is Graft's business
            out["path"] = dataset.path
    else:
        out["issue_counts"] = {level: sum(1 for i in issues if i["level"] == level) for level in ("error", "warning")}
    out["created_at"] = iso(dataset.created_at)
    return out


def stored_result(row: dict[str, Any]) -> dict[str, Any]:
    """A predictor's row as prediction_results columns: ood_score and reason ride in the top_k JSON column.

    That column then holds {"ranked": [...], "ood_score": ..., "reason": ...} instead of the bare list (no migration).
    """
    out = {k: v for k, v in row.items() if k not in ("ood_score", "reason")}
    out["top_k"] = {"ranked": row.get("top_k") or [], "ood_score": row.get("ood_score"), "reason": row.get("reason")}
    return out


def result_row(result: PredictionResult) -> dict[str, Any]:
    """One predict result row as the API shows it (rows stored before ood_score existed have it null)."""
    stored = result.top_k or []
    extra = stored if isinstance(stored, dict) else {"ranked": stored}
    return {
        "path": result.path, "label": result.label, "confidence": result.confidence,
        "top_k": extra.get("ranked") or [], "error": result.error,
        "ood_score": extra.get("ood_score"), "reason": extra.get("reason"),
    }
