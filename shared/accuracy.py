"""The one accuracy a model has: its out-of-sample estimate, what it was measured on, and which candidate was kept.

Training tries two candidates (a logistic-regression head on the frozen trunk, and the epoch-trained model) and
keeps one (worker/core/refit.py); the per-epoch validation accuracies are a training curve, not the model's
accuracy. Every surface (API, CLI, client, dashboard) shows `accuracy_of(metrics)`, worded by `describe`.
Pure: no Flask, Celery, SQLAlchemy or torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SOURCES = ("holdout", "cv")


@dataclass(frozen=True)
class Accuracy:
    """A model's accuracy estimate: value, how it was measured (holdout or k-fold CV), on how many images, the kept candidate."""

    value: float
    source: str  # "holdout": the validation split, never trained on; "cv": k-fold over every image
    images: int | None
    kept: str  # "linear head" or "fine-tuned model (epoch N)"

    def to_dict(self) -> dict[str, Any]:
        """As the API shows it."""
        return asdict(self)


def accuracy_of(metrics: dict[str, Any] | None) -> Accuracy | None:
    """The estimate in a model's (or finished training job's) metrics; None before training ends."""
    metrics = metrics or {}
    value = metrics.get("estimated_acc", metrics.get("val_acc"))
    if value is None:
        return None
    source = metrics.get("estimate") if metrics.get("estimate") in SOURCES else "holdout"
    val, train = metrics.get("val_images"), metrics.get("train_images")
    images = val if source == "holdout" else (None if val is None or train is None else val + train)
    kept = ("linear head" if metrics.get("selected") == "linear_head"
            else f"fine-tuned model (epoch {metrics.get('best_epoch')})")
    return Accuracy(round(float(value), 4), source, images, kept)


def describe(accuracy: Accuracy | dict[str, Any] | None) -> str:
    """One line every surface prints: '86.7% (holdout, 30 validation images; kept the linear head)'."""
    if accuracy is None:
        return "–"
    a = accuracy if isinstance(accuracy, Accuracy) else Accuracy(**accuracy)
    how = ("holdout" + (f", {a.images} validation images" if a.images else "") if a.source == "holdout"
           else "k-fold cross-validation" + (f" over {a.images} images" if a.images else ""))
    return f"{100 * a.value:.1f}% ({how}; kept the {a.kept})"
