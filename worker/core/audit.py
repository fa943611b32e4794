"""Label audit: which training images are likely mislabeled, most suspicious first.

Out-of-fold probabilities from a k-fold logistic regression on pooled features (the frozen trunk's: inspection
computes them, a training job has them cached), then cleanlab's confident learning (`find_label_issues`, pruned by
the estimated noise rate, ranked by self-confidence). A suspect must also be predicted as another class with at
least MIN_CONFIDENCE. C and MIN_CONFIDENCE were chosen on four sets with 5 % of labels flipped
(bench/audit_bench.py --grid, docs/accuracy.md): the pair with the best mean F1 over sets, sizes and backbones.
Pure: no Flask, Celery or SQLAlchemy.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

FOLDS = 5
C = 0.1  # inverse L2 strength on raw pooled features (grid 0.03-1; 0.03, chosen on hymenoptera alone, missed more)
MIN_CONFIDENCE = 0.8  # grid 0-0.8: lower confidences let the hard (not misfiled) images of flowers and trash in
MAX_SUSPECTS = 1000  # listed per audit (the count is complete)
CODE = "suspected_mislabel"


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int = FOLDS,
                              seed: int = 0) -> np.ndarray:
    """(N, classes) probabilities, each row from a model that did not see that row."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(labels), num_classes))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for fit_rows, held in splitter.split(features, labels):
        model = LogisticRegression(C=C, max_iter=3000).fit(features[fit_rows], labels[fit_rows])
        probs[np.ix_(held, model.classes_)] = model.predict_proba(features[held])
    return probs


def ranked_issues(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0,
                  folds: int = FOLDS) -> tuple[np.ndarray, np.ndarray]:
    """(out-of-fold probabilities, confident learning's issues ranked most suspicious first)."""
    from cleanlab.filter import find_label_issues

    probs = out_of_fold_probabilities(features, labels, num_classes, folds, seed)
    # n_jobs=1: cleanlab's default multiprocessing cannot start inside a Celery pool child (daemonic)
    ranked = find_label_issues(labels, probs, filter_by="prune_by_noise_rate",
                               return_indices_ranked_by="self_confidence", n_jobs=1)
    return probs, np.asarray(ranked, dtype=int)


def confident(ranked: np.ndarray, probs: np.ndarray, labels: np.ndarray,
              min_confidence: float = MIN_CONFIDENCE) -> list[int]:
    """The ranked issues predicted as another class with at least min_confidence, in rank order."""
    return [int(i) for i in ranked if probs[i].argmax() != labels[i] and probs[i].max() >= min_confidence]


def audit_labels(features: np.ndarray, labels: Sequence[int], paths: Sequence[str], classes: Sequence[str],
                 seed: int = 0) -> dict[str, Any] | None:
    """The suspects (path, label, suggested class, its out-of-fold confidence), or None when too few images."""
    y = np.asarray(labels, dtype=int)
    counts = np.bincount(y, minlength=len(classes))
    folds = min(FOLDS, int(counts.min()))
    if folds < 2 or len(classes) < 2:
        log.info("label audit skipped: a class has fewer than 2 images")
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and cleanlab's small-class chatter say nothing about labels
        probs, ranked = ranked_issues(np.asarray(features, dtype=np.float64), y, len(classes), seed, folds)
    suspects = [{"path": paths[i], "label": classes[y[i]], "suggested": classes[int(probs[i].argmax())],
                 "confidence": round(float(probs[i].max()), 4)} for i in confident(ranked, probs, y)]
    log.info("label audit: %d suspects among %d images", len(suspects), len(y))
    return {"method": f"cleanlab confident learning on {folds}-fold logistic regression of pooled features",
            "images": int(len(y)), "count": len(suspects), "suspects": suspects[:MAX_SUSPECTS]}


def mislabel_issue(audit: dict[str, Any] | None, job_id: str | None = None) -> dict[str, Any] | None:
    """The dataset report's `suspected_mislabel` warning (files most suspicious first), or None without suspects."""
    if not audit or not audit["suspects"]:
        return None
    suspects = audit["suspects"]
    return {"level": "warning", "code": CODE,
            "message": f"{audit['count']} image(s) may be mislabeled (a model trained on the other images "
                       "confidently predicts another class); check them, most suspicious first",
            "files": [s["path"] for s in suspects], "count": audit["count"], "suspects": suspects, "job_id": job_id}
