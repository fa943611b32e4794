"""Calibrated confidence: temperature scaling fitted on out-of-sample logits, its expected calibration error, and
per-class precision curves from which a predict job's `target_precision` picks each class's threshold.

Temperature scaling (one scalar dividing the logits) keeps every prediction's label and only makes the softmax
mean what it says; with the tens to hundreds of validation images a Graft job holds back, one parameter is what
such a set can fit without overfitting (vector or matrix scaling fit C or C^2 more). Pure numpy/scipy.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from scipy.optimize import minimize_scalar

log = logging.getLogger(__name__)

ECE_BINS = 15
CURVE_POINTS = 64  # most (threshold, precision, recall) points kept per class: a bounded table in the model
LOG_T_BOUNDS = (-3.0, 3.0)  # temperatures from 0.05 to 20
CV_FOLDS = 5  # folds of the out-of-sample logits that decide whether a fitted temperature is kept
MIN_IMAGES = 2 * CV_FOLDS  # fewer images: one parameter cannot be checked out of sample, T stays 1


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature (float64, numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of labels under softmax(logits / temperature)."""
    p = softmax(logits, temperature)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: Sequence[int]) -> float:
    """The temperature that minimises the NLL of labels (1.0 when there is nothing to fit on)."""
    y = np.asarray(labels, dtype=int)
    if len(y) == 0:
        return 1.0
    res = minimize_scalar(lambda t: nll(logits, y, float(np.exp(t))), bounds=LOG_T_BOUNDS, method="bounded")
    return float(np.exp(res.x))


def _no_optimum(logits: np.ndarray, labels: np.ndarray, t: float) -> bool:
    """The NLL has no finite optimum: every prediction right (it falls forever as T -> 0), or the fit hit an edge."""
    # The bounded search stops short of its edge (log T -2.96 for the bound -3), hence the loose edge test.
    return bool((np.argmax(logits, axis=1) == labels).all()) or min(abs(np.log(t) - b) for b in LOG_T_BOUNDS) < 0.1


def cv_nll(logits: np.ndarray, labels: np.ndarray, folds: int = CV_FOLDS, seed: int = 0) -> tuple[float, float]:
    """(held-out NLL with T fitted on the other folds, NLL with T = 1), both over every image, k-fold."""
    n = len(labels)
    order = np.random.default_rng(seed).permutation(n)
    held_total = 0.0
    for part in np.array_split(order, min(folds, n)):
        rest = np.setdiff1d(order, part)
        t = fit_temperature(logits[rest], labels[rest]) if len(rest) else 1.0
        held_total += nll(logits[part], labels[part], t) * len(part)
    return held_total / n, nll(logits, labels)


def choose_temperature(logits: np.ndarray, labels: Sequence[int], seed: int = 0) -> tuple[float, str]:
    """The NLL-fitted temperature when it generalises, else 1.0; and why.

    logits are out of sample (validation, or a refit head's out-of-fold logits). T is kept only when a temperature
    fitted on k-1 folds of them lowers the NLL of the held-out fold, pooled over the folds, below that of T = 1, and
    when the fit has a finite optimum (with no errors the NLL keeps falling as T -> 0: sharpening without
    evidence, T 0.05). The plain fit raised the NLL on hymenoptera's val/ 1.8-6.5 fold (bench/calibration_rule.py,
    docs/accuracy.md); over- or under-confident logits pass the test.
    """
    y = np.asarray(labels, dtype=int)
    if len(y) < MIN_IMAGES:
        return 1.0, f"fewer than {MIN_IMAGES} images to fit on"
    t = fit_temperature(logits, y)
    if _no_optimum(np.asarray(logits), y, t):
        return 1.0, f"no finite optimum (fitted {t:.3g}: the predictions are all right or separable)"
    held, plain = cv_nll(np.asarray(logits, dtype=np.float64), y, seed=seed)
    if held < plain:
        return t, f"{CV_FOLDS}-fold held-out NLL {held:.4f} < {plain:.4f} at T = 1"
    return 1.0, f"fitted {t:.3f}, but its {CV_FOLDS}-fold held-out NLL {held:.4f} >= {plain:.4f} at T = 1"


def ece(probs: np.ndarray, labels: Sequence[int], bins: int = ECE_BINS) -> float:
    """Expected calibration error: |accuracy - confidence| over equal-width confidence bins, weighted by size."""
    y = np.asarray(labels, dtype=int)
    if len(y) == 0:
        return 0.0
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(total)


def precision_curves(probs: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                     points: int = CURVE_POINTS) -> dict[str, list[list[float]]]:
    """Per class, [threshold, precision, recall] of "predicted this class with confidence >= threshold".

    Thresholds are the confidences seen, highest first; at most `points` of them are kept (evenly spaced).
    """
    y = np.asarray(labels, dtype=int)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    curves: dict[str, list[list[float]]] = {}
    for c, name in enumerate(classes):
        mine = np.flatnonzero(pred == c)
        order = mine[np.argsort(-conf[mine], kind="stable")]
        hits = np.cumsum(y[order] == c)
        support = max(int((y == c).sum()), 1)
        rows = [[round(float(conf[i]), 6), round(float(h / (n + 1)), 4), round(float(h / support), 4)]
                for n, (i, h) in enumerate(zip(order, hits))]
        if len(rows) > points:
            rows = [rows[int(round(j))] for j in np.linspace(0, len(rows) - 1, points)]
        curves[name] = rows
    return curves


def class_thresholds(curves: dict[str, list[list[float]]], target: float) -> dict[str, float]:
    """Per class, the lowest threshold whose validation precision is at least target.

    A class whose precision never reaches target gets a threshold above 1: its predictions are all `unknown`.
    """
    out = {}
    for name, rows in curves.items():
        reaching = [t for t, p, _ in rows if p >= target]
        out[name] = min(reaching) if reaching else 1.01
    return out


def calibrate(logits: np.ndarray, labels: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """Choose the temperature on out-of-sample logits (choose_temperature); ECE and NLL before and after; curves."""
    y = np.asarray(labels, dtype=int)
    t, why = choose_temperature(logits, y)
    before, after = softmax(logits), softmax(logits, t)
    result = {
        "method": "temperature", "temperature": round(t, 5), "images": int(len(y)),
        "kept": t != 1.0, "why": why,
        "ece_before": round(ece(before, y), 5), "ece_after": round(ece(after, y), 5),
        "nll_before": round(nll(logits, y), 5), "nll_after": round(nll(logits, y, t), 5),
        "curves": precision_curves(after, y, classes),
    }
    log.info("temperature %.3f (%s): ECE %.4f -> %.4f on %d images", t, why, result["ece_before"], result["ece_after"],
             len(y))
    return result
