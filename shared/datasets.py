"""Dataset rules shared by the API and the workers: sources, what blocks training, who uses a dataset."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from graft.shared.lifecycle import QUEUED, RUNNING
from graft.shared.models import DATASET_FAILED, READY, DatasetRecord, Job
ACTIVE = (QUEUED, RUNNING)  # a dataset used by a job in one of these states cannot be deleted


def first_errors(dataset: DatasetRecord, limit: int = 3) -> str:
    """The first error messages of a dataset's report (or why inspection failed), joined for one message."""
    errors = [i["message"] for i in (dataset.report or {}).get("issues", []) if i["level"] == "error"]
    if not errors and dataset.error:
        errors = [dataset.error]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(errors[:limit]) + more


def not_trainable_reason(dataset: DatasetRecord) -> str | None:
    """Why a training job may not use this dataset now, or None when it is ready."""
    if dataset.status == READY:
        return None
    if dataset.status == DATASET_FAILED:
        return f"dataset {dataset.id} failed inspection: {first_errors(dataset)}"
    return f"dataset {dataset.id} is still being inspected; try again when its status is ready"


def report_status(report: dict[str, Any]) -> tuple[str, bool]:
    """The status a finished inspection gives a dataset, and whether its report holds errors."""
    has_errors = any(issue["level"] == "error" for issue in report.get("issues", []))
    return (DATASET_FAILED if has_errors else READY), has_errors


def jobs_using(session: Session, dataset_id: str) -> list[str]:
    """Ids of queued or running training jobs on this dataset."""
    rows = session.execute(select(Job.id, Job.params).where(Job.kind == "train", Job.status.in_(ACTIVE)))
    return [job_id for job_id, params in rows if (params or {}).get("dataset_id") == dataset_id]
