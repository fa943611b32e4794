"""Classification metrics: confusion matrix and per-class precision/recall/support."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def classification_report(labels: Sequence[int], preds: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """val_acc, confusion_matrix (rows = true class, columns = predicted) and per_class figures."""
    y, p = np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)
    n = len(classes)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (y, p), 1)
    per_class = {}
    for i, name in enumerate(classes):
        predicted, support = matrix[:, i].sum(), matrix[i, :].sum()
        per_class[name] = {
            "precision": round(float(matrix[i, i] / predicted), 5) if predicted else 0.0,
            "recall": round(float(matrix[i, i] / support), 5) if support else 0.0,
            "support": int(support),
        }
    acc = float(np.trace(matrix) / matrix.sum()) if matrix.sum() else 0.0
    return {"val_acc": round(acc, 5), "confusion_matrix": matrix.tolist(), "per_class": per_class}
