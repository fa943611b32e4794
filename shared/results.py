"""Prediction results: one row per input file of a predict job."""
from __future__ import annotations

from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import Base


class PredictionResult(Base):
    """The label (or the error) for one file of a predict job; (job_id, path) is unique."""

    __tablename__ = "prediction_results"
    __table_args__ = (UniqueConstraint("job_id", "path", name="uq_prediction_results_job_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    chunk: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(255), default=None)
    confidence: Mapped[float | None] = mapped_column(Float, default=None)
    top_k: Mapped[list[Any]] = mapped_column(default=list)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)  # which worker classified it


def result_row(result: PredictionResult) -> dict[str, Any]:
    """The result item as the API shows it."""
    return {
        "path": result.path, "label": result.label, "confidence": result.confidence,
        "top_k": result.top_k or [], "error": result.error,
    }
