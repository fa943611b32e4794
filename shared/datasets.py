"""Datasets: an uploaded archive or a server folder, inspected once; the report is stored with it."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from shared.models import Base, Job, new_id, utcnow

UPLOAD, SERVER_PATH = "upload", "path"
ACTIVE = ("queued", "running")  # a dataset used by a job in one of these states cannot be deleted


class Dataset(Base):
    """A dataset and its inspection report; path is its root folder (ours for uploads, the user's otherwise)."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    classes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    num_images: Mapped[int] = mapped_column(Integer, default=0)
    has_errors: Mapped[bool] = mapped_column(Boolean, default=False)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


def serialize_dataset(dataset: Dataset, full: bool = True) -> dict[str, Any]:
    """The dataset resource as the API shows it (the list leaves out the per-file details)."""
    report = dataset.report or {}
    issues = report.get("issues", [])
    out: dict[str, Any] = {
        "id": dataset.id, "name": dataset.name, "source": dataset.source, "classes": dataset.classes,
        "num_images": dataset.num_images, "has_errors": dataset.has_errors,
    }
    if full:
        out.update(issues=issues, conversions=report.get("conversions", {}), layout=report.get("layout"),
                   splits=report.get("splits"), num_files=report.get("num_files"), path=dataset.path,
                   size_bytes=dataset.size_bytes)
    else:
        out["issue_counts"] = {level: sum(1 for i in issues if i["level"] == level) for level in ("error", "warning")}
    created = dataset.created_at
    out["created_at"] = created.isoformat() if created else None
    return out


def first_errors(dataset: Dataset, limit: int = 3) -> str:
    """The first error messages of a dataset's report, joined for a job's error."""
    errors = [i["message"] for i in (dataset.report or {}).get("issues", []) if i["level"] == "error"]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(errors[:limit]) + more


def jobs_using(session: Session, dataset_id: str) -> list[str]:
    """Ids of queued or running training jobs on this dataset."""
    rows = session.execute(select(Job.id, Job.params).where(Job.kind == "train", Job.status.in_(ACTIVE)))
    return [job_id for job_id, params in rows if (params or {}).get("dataset_id") == dataset_id]
