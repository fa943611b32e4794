"""One accuracy per model: what every surface shows, from the model's metrics."""
from __future__ import annotations

import pytest

from graft.shared.accuracy import Accuracy, accuracy_of, describe


@pytest.mark.parametrize(("metrics", "expected", "text"), [
    ({"estimated_acc": 0.8667, "val_acc": 0.8667, "estimate": "holdout", "selected": "linear_head",
      "val_images": 30, "train_images": 120, "best_epoch": 7},
     Accuracy(0.8667, "holdout", 30, "linear head"), "86.7% (holdout, 30 validation images; kept the linear head)"),
    ({"estimated_acc": 0.82, "val_acc": 0.8, "estimate": "cv", "selected": "linear_head", "val_images": 10,
      "train_images": 40},
     Accuracy(0.82, "cv", 50, "linear head"), "82.0% (k-fold cross-validation over 50 images; kept the linear head)"),
    ({"estimated_acc": 0.9, "estimate": "holdout", "selected": "epochs", "best_epoch": 6, "val_images": 20},
     Accuracy(0.9, "holdout", 20, "fine-tuned model (epoch 6)"),
     "90.0% (holdout, 20 validation images; kept the fine-tuned model (epoch 6))"),
    ({"val_acc": 0.75}, Accuracy(0.75, "holdout", None, "fine-tuned model (epoch None)"),  # an older model
     "75.0% (holdout; kept the fine-tuned model (epoch None))"),
])
def test_the_estimate_and_its_wording(metrics: dict, expected: Accuracy, text: str) -> None:
    assert accuracy_of(metrics) == expected
    assert describe(expected) == describe(expected.to_dict()) == text


@pytest.mark.parametrize("metrics", [None, {}, {"history": [], "best_val_acc": 0.9}])
def test_no_accuracy_before_training_ends(metrics: dict | None) -> None:
    # best_val_acc is the training curve's best epoch, never the model's accuracy
    assert accuracy_of(metrics) is None and describe(None) == "–"
