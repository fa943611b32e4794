"""Choices made for the user: which backbone fits the time budget, and how strongly to regularise the head.

Both are cheap: the backbone from a table of measured per-image costs, the head's regularisation by
cross-validation of a logistic regression on the cached pooled features (no trunk pass).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from graft.shared.params import AUTO_BACKBONE
from graft.worker.core.dataset import find_files
from graft.worker.core.spec import TrainSpec, concrete

log = logging.getLogger(__name__)

# Seconds per image on the project's 2-core machine, each backbone at its own input size: (the caching pass as a job
# runs it, per view: OpenVINO trunk, crops, cache writes; one fine-tune epoch of the unfrozen stages from cached
# activations, per training image, validation included). `python bench/backbone_costs.py`, quiet, 2026-11-29 13:28
# UTC: model-only forward 11.1 / 17.7 / 22.2 ms and fine-tune step 2.2 / 2.7 / 3.4 ms for Lite0 / 1 / 2; a default
# Lite0 job on ants/bees spent 15.1 ms per view in its caching pass (x1.36) and 2.3 ms per training image per
# fine-tune epoch (x1.05), so Lite1's and Lite2's are their model-only figures times those ratios.
COSTS: dict[str, tuple[float, float]] = {
    "efficientnet_lite0": (0.0151, 0.0023),
    "efficientnet_lite1": (0.0241, 0.0028),
    "efficientnet_lite2": (0.0302, 0.0036),
}
AUTO_ORDER = ("efficientnet_lite2", "efficientnet_lite1", "efficientnet_lite0")  # most accurate first
# Without a time_budget_s, auto takes the most accurate Lite whose estimate fits default_budget_s(images): at least
# FLOOR_S for any set, and PER_IMAGE_S an image less OFFSET_S beyond, which is 2 minutes for 1,000 images. Two
# measured facts pin it (docs/accuracy.md, "Four domains"): the plain probes rank Lite2 and Lite1 above Lite0 on all
# four sets, so accuracy asks for the largest; and the default ants/bees job (398 images) must stay 25x faster than
# the PyTorch tutorial's 25-epoch fine-tune (1035 s on this machine: at most about 41 s), which Lite1 (47 s
# estimated) misses and Lite0 (32 s) meets. So: Lite2 up to ~300 images, Lite1 to ~380, Lite0 to ~780, Lite1 beyond.
FLOOR_S = 45.0
PER_IMAGE_S = 0.13
OFFSET_S = 10.0
EXPLICIT_SHARE = 0.5  # a job's own time_budget_s also stops training: its estimate must fit half of it
DECODE_S = 0.005  # per image, on one core


def default_budget_s(images: int) -> float:
    """The seconds auto allows a default job's estimate on this many images."""
    return max(FLOOR_S, PER_IMAGE_S * images - OFFSET_S)


def estimate_seconds(backbone: str, images: int, views: int, epochs: int, frozen_epochs: int, val_split: float,
                     refit: bool) -> float:
    """Predicted wall time of a training job: decode, cache the trunk over every view, fine-tune epochs (twice with refit)."""
    forward, finetune = COSTS[backbone]
    val = images * val_split
    train = images - val
    passes = train * (views + 1) + val
    tuned = max(0, epochs - frozen_epochs) * (images if refit else 0) + max(0, epochs - frozen_epochs) * train
    return images * DECODE_S + passes * forward + tuned * finetune


def choose_backbone(images: int, budget_s: float, **job: Any) -> tuple[str, dict[str, Any]]:
    """The most accurate EfficientNet-Lite whose estimated time fits budget_s (else Lite0), and why."""
    estimates = {name: round(estimate_seconds(name, images, **job), 1) for name in AUTO_ORDER}
    chosen = next((name for name in AUTO_ORDER if estimates[name] <= budget_s), AUTO_ORDER[-1])
    why = {"chosen": chosen, "images": images, "budget_s": round(budget_s, 1), "estimated_s": estimates}
    log.info("backbone auto: %s for %d images (estimated %s; budget %.0f s)", chosen, images,
             ", ".join(f"{name.removeprefix('efficientnet_')} {s:.0f} s" for name, s in estimates.items()), budget_s)
    return chosen, why


# Inverse regularisation strengths tried on the raw pooled features (sklearn's C: smaller = stronger). Raw, not
# standardised: standardising lifts the many near-silent channels to the loud ones' scale, and on hymenoptera
# with 10 images a class that cost 6-10 points of val accuracy at every C (docs/accuracy.md). Only C = 1: choosing
# C from (0.003 ... 3) by k-fold CV on the user's images lost to the fixed C = 1 on held-out images (four sets x
# 10/20/50 a class x 3 draws, Lite2 features: 0.8818 against 0.8838 mean accuracy; C >= 0.3 all within 0.001 of
# each other, smaller C worse everywhere): at these sizes the CV's choice is mostly noise.
C_GRID = (1.0,)
DEFAULT_C = 1.0  # scikit-learn's default: the plain probe's
FOLDS = 5


@dataclass
class LinearHead:
    """A logistic-regression head on pooled features: weights and bias for nn.Linear, and how C was chosen."""

    weight: torch.Tensor  # (classes, D)
    bias: torch.Tensor  # (classes,)
    C: float
    cv_acc: dict[float, float]  # C -> out-of-fold accuracy on plain views

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class scores of pooled features."""
        return features @ self.weight.T + self.bias


def _lr(C: float, balanced: bool, tol: float = 1e-3) -> Any:
    from sklearn.linear_model import LogisticRegression

    # warm_start: each larger C starts from the last solution (ascending grid), about 4x fewer iterations. The CV
    # ranks Cs with tol 1e-3; the head that is kept is solved to scikit-learn's default 1e-4.
    return LogisticRegression(C=C, max_iter=5000, tol=tol, warm_start=True,
                              class_weight="balanced" if balanced else None)


def _as_linear(lr: Any, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The regression as one linear layer's weights (binary: softmax([-z/2, z/2]) = sigmoid(z))."""
    coef, intercept = lr.coef_, lr.intercept_
    if num_classes == 2 and coef.shape[0] == 1:
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return torch.tensor(coef, dtype=torch.float32), torch.tensor(intercept, dtype=torch.float32)


def views_dataset(*blocks: tuple[torch.Tensor, list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of (views, N, D) cached features, block after block: x, y, image index, is-plain (view 0)."""
    x, y, group, plain = [], [], [], []
    offset = 0
    for views, labels in blocks:
        v, n, d = views.shape
        x.append(views.reshape(v * n, d))
        y.append(np.tile(np.asarray(labels), v))
        group.append(offset + np.tile(np.arange(n), v))
        plain.append(np.repeat(np.arange(v) == 0, n))
        offset += n
    return torch.cat(x).numpy(), np.concatenate(y), np.concatenate(group), np.concatenate(plain)


def cross_validate_head(x: np.ndarray, y: np.ndarray, groups: np.ndarray, plain: np.ndarray, balanced: bool,
                        seed: int, grid: tuple[float, ...] = C_GRID) -> dict[float, float]:
    """C -> accuracy on the plain views of held-out images, k-fold with every view of an image in one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = int(np.bincount(y[plain]).min())
    if per_class < 2:  # a fold would train without that class: nothing to compare, keep the standard C
        log.info("a class has %d image(s): C not cross-validated", per_class)
        return {c: 0.0 for c in grid}
    folds = min(FOLDS, per_class)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    correct = {c: 0 for c in grid}
    with threadpool_limits(1):  # small BLAS calls: threads only spin (10x slower on a loaded 2-core machine)
        for train_idx, test_idx in splitter.split(x, y, groups):
            test_idx = test_idx[plain[test_idx]]
            lr = _lr(grid[0], balanced)
            for c in sorted(grid):
                lr.set_params(C=c).fit(x[train_idx], y[train_idx])
                correct[c] += int((lr.predict(x[test_idx]) == y[test_idx]).sum())
    return {c: correct[c] / int(plain.sum()) for c in grid}


def fit_head(x: np.ndarray, y: np.ndarray, C: float, num_classes: int, balanced: bool,
             cv_acc: dict[float, float], sample_weight: np.ndarray | None = None) -> LinearHead:
    """The logistic-regression head at C on all rows of x."""
    with threadpool_limits(1):
        lr = _lr(C, balanced, tol=1e-4).fit(x, y, sample_weight=sample_weight)
    weight, bias = _as_linear(lr, num_classes)
    return LinearHead(weight, bias, C, cv_acc)


def out_of_fold_logits(x: np.ndarray, y: np.ndarray, groups: np.ndarray, plain: np.ndarray, C: float,
                       num_classes: int, balanced: bool, seed: int,
                       sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(logits, labels) of every image's plain view from the head at C fitted on the other folds; None below 2 a class.

    Log-probabilities serve as logits: they differ by a per-row constant, which no temperature's softmax sees.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = int(np.bincount(y[plain], minlength=num_classes).min())
    if per_class < 2:
        return None
    rows = np.flatnonzero(plain)
    out = np.zeros((len(rows), num_classes))
    where = {int(r): i for i, r in enumerate(rows)}
    splitter = StratifiedGroupKFold(n_splits=min(FOLDS, per_class), shuffle=True, random_state=seed)
    weight = np.ones(len(y)) if sample_weight is None else sample_weight
    with threadpool_limits(1):
        for train_idx, test_idx in splitter.split(x, y, groups):
            test_idx = test_idx[plain[test_idx]]
            lr = _lr(C, balanced, tol=1e-4).fit(x[train_idx], y[train_idx], sample_weight=weight[train_idx])
            logp = np.full((len(test_idx), num_classes), np.log(1e-12))
            logp[:, lr.classes_] = lr.predict_log_proba(x[test_idx])
            out[[where[int(r)] for r in test_idx]] = logp
    return out, y[rows]


def best_c(cv_acc: dict[float, float]) -> float:
    """The best out-of-fold C; on a tie, the standard probe's C = 1 if it is tied, else the plateau's middle."""
    # With few images the best is a plateau. Leaving the standard probe only on evidence keeps the head from losing
    # to it by chance (docs/accuracy.md: the plateau's middle was one val/ image below C = 1 in three of six rows).
    top = max(cv_acc.values())
    tied = sorted(c for c, acc in cv_acc.items() if acc == top)
    return DEFAULT_C if DEFAULT_C in tied else tied[(len(tied) - 1) // 2]


def resolve_backbone(spec: TrainSpec, data_dir: str | Path, roots: Sequence[Path] | None = None,
                     ) -> tuple[TrainSpec, dict[str, Any] | None]:
    """spec with backbone "auto" replaced by the choice for this dataset's size (and image_size set), and why."""
    if spec.backbone != AUTO_BACKBONE:
        return concrete(spec, spec.backbone), None
    _, train, val = find_files(data_dir, roots)
    images = sum(map(len, train.values())) + sum(map(len, (val or {}).values()))
    budget = default_budget_s(images) if spec.time_budget_s is None else spec.time_budget_s * EXPLICIT_SHARE
    name, why = choose_backbone(images, budget, views=spec.views, epochs=spec.epochs,
                                frozen_epochs=spec.frozen_phase(), val_split=spec.val_split, refit=spec.refit)
    return concrete(spec, name), why
