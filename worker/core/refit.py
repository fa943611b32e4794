"""After the selection run: choose the final recipe on held-out images, then refit it on every labelled image.

Two candidates share the selection run's cached trunk outputs: the epoch-trained model (best epoch on the
validation split) and a logistic-regression head on the frozen trunk whose regularisation C is chosen by
k-fold cross-validation on the cached pooled features. The chosen one is trained again, with the same settings,
on train + validation images, from the same cache (no trunk pass is repeated). The accuracy reported stays an
out-of-sample estimate: the holdout accuracy of the chosen candidate, or its cross-validated accuracy when the
validation split is too small to choose on (fewer than CV_BELOW images in a class).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from graft.worker.core.backbones import Classifier
from graft.worker.core.dataset import TrainingData
from graft.worker.core.features import ViewCache, cached_epoch
from graft.worker.core.selection import (LinearHead, best_c, cross_validate_head, fit_head, out_of_fold_logits,
                                          views_dataset)
from graft.worker.core.spec import TrainSpec, frozen_stages

log = logging.getLogger(__name__)

CV_BELOW = 10  # a validation class smaller than this cannot choose between candidates: choose by k-fold CV
MARGIN_IMAGES = 2  # the fine-tuned model must beat the linear head by at least this many validation images...
# ...and by Z_MARGIN standard errors of the images they disagree on (McNemar): the best of many epochs on the same
# validation images is optimistic. With two images alone, flowers at 50 a class kept a fine-tuned model 5 points
# below the head in one of three draws (docs/accuracy.md).
Z_MARGIN = 2.0
Fresh = Callable[[], tuple[Classifier, torch.optim.Optimizer, Any]]  # a pretrained model, its optimizer, scheduler


@dataclass
class Outcome:
    """The final model and what the metrics say about how it was chosen and trained."""

    model: Classifier
    val_pred: list[int]  # the chosen candidate's predictions on the validation split (out of sample)
    metrics: dict[str, Any]
    # The chosen candidate BEFORE the refit (trained without the validation split): calibration, precision curves
    # and the stored validation predictions come from its outputs, the only out-of-sample ones.
    holdout: Classifier | None = None
    holdout_epoch: int = 0  # the epoch whose evaluation val_pred is (0: the linear head on the cached features)
    trunk_changed: bool = False  # the final model's trunk differs from the cached (frozen) one: fine-tuned
    # A refit linear head's out-of-fold (logits, labels) over every image at its own C: calibration is fitted on
    # these instead of the holdout head's validation logits, whose C may differ (docs/accuracy.md).
    calibration_set: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.holdout is None:
            self.holdout = self.model


def _head_views(cache: ViewCache) -> int:
    """How many cached views the head learns from: plain + mirror, the probe's recipe.

    The random crops serve fine-tuning; as head training data they were one val/ image worse in both rows of
    docs/accuracy.md where a CV over the view sets preferred them.
    """
    return min(2, cache.views)


def _linear_candidate(cache: ViewCache, data: TrainingData, balanced: bool, seed: int,
                      ) -> tuple[LinearHead, list[int], str]:
    """The CV-regularised logistic head on the training split's cached views, its validation predictions, its views."""
    x, y, groups, plain = views_dataset((cache.train_pooled[: _head_views(cache)], data.train.labels))
    cv = cross_validate_head(x, y, groups, plain, balanced, seed)
    head = fit_head(x, y, best_c(cv), len(data.classes), balanced, cv)
    return head, head.logits(cache.val_pooled).argmax(1).tolist(), "mirror"


def _all_data_head(cache: ViewCache, data: TrainingData, balanced: bool, seed: int, views: str,
                   ) -> tuple[LinearHead, tuple[np.ndarray, np.ndarray] | None]:
    """The logistic head refit on every labelled image, C chosen again by k-fold CV over all of them; its
    out-of-fold logits at that C (calibration)."""
    count = _head_views(cache)
    val = cache.val_pooled[None]
    if count >= 2 and cache.val_mirror_pooled is not None:
        val = torch.stack([cache.val_pooled, cache.val_mirror_pooled])
    x, y, groups, plain = views_dataset((cache.train_pooled[:count], data.train.labels), (val, data.val.labels))
    cv = cross_validate_head(x, y, groups, plain, balanced, seed)
    # Every image weighs the same: a val image has fewer rows (no random crops) than a training image.
    weight = np.where(groups >= len(data.train), count / len(val), 1.0)
    head = fit_head(x, y, best_c(cv), len(data.classes), balanced, cv, sample_weight=weight)
    return head, out_of_fold_logits(x, y, groups, plain, head.C, len(data.classes), balanced, seed, weight)


def _with_head(fresh: Fresh, head: LinearHead) -> Classifier:
    model = fresh()[0]
    with torch.no_grad():
        model.head.weight.copy_(head.weight)
        model.head.bias.copy_(head.bias)
    return model.eval()


def _refit_epochs(fresh: Fresh, cache: ViewCache, data: TrainingData, spec: TrainSpec, epochs: int,
                  weight: torch.Tensor | None, should_stop: Callable[[], bool]) -> Classifier:
    """The selection run's first `epochs` epochs again, on train + val from the cache (val: its plain view)."""
    model, optimizer, scheduler = fresh()
    gen = torch.Generator().manual_seed(spec.seed + 2)
    views = cache.views
    train_y, val_y = torch.tensor(data.train.labels), torch.tensor(data.val.labels)
    pooled = torch.cat([cache.train_pooled.flatten(0, 1), cache.val_pooled.repeat(views, 1)])
    pooled_y = torch.cat([train_y.repeat(views), val_y.repeat(views)])
    common = (spec.batch_size, spec.label_smoothing, gen, should_stop)
    for epoch in range(epochs):
        frozen = frozen_stages(model, spec, epoch)
        if frozen == len(model.stages):
            cached_epoch(model, pooled, pooled_y, None, optimizer, *common, weight=weight)
        else:
            maps = torch.cat([cache.train_maps[epoch % views], cache.val_maps])
            cached_epoch(model, maps, torch.cat([train_y, val_y]), frozen, optimizer, *common, weight=weight)
        scheduler.step()
    return model.eval()


def epochs_margin(head_right: np.ndarray, epochs_right: np.ndarray) -> tuple[int, int, float]:
    """(images only the epochs got right, images only the head got right, wins - losses the epochs need to be kept)."""
    wins, losses = int((epochs_right & ~head_right).sum()), int((head_right & ~epochs_right).sum())
    return wins, losses, max(MARGIN_IMAGES, Z_MARGIN * float(np.sqrt(wins + losses)))


def choose_and_refit(
    selected: Classifier, best: dict[str, Any], data: TrainingData, cache: ViewCache | None, spec: TrainSpec,
    fresh: Fresh, weight: torch.Tensor | None, should_stop: Callable[[], bool],
) -> Outcome:
    """Pick the final recipe (epoch-trained model or CV-regularised linear head) and refit it on all images."""
    val_y = np.asarray(data.val.labels)
    meta: dict[str, Any] = {"selected": "epochs", "estimate": "holdout", "estimated_acc": best["val_acc"],
                            "refit": False, "selection_val_acc": best["val_acc"], "epochs_val_acc": best["val_acc"]}
    tuned = best["epoch"] > spec.frozen_phase()
    if cache is None:  # "full" mode, or a resumed run that had already finished its epochs
        meta["refit_skipped"] = "no cached trunk outputs to refit from"
        return Outcome(selected, best["pred"], meta, holdout_epoch=best["epoch"], trunk_changed=tuned)
    balanced = weight is not None
    head, head_pred, views = _linear_candidate(cache, data, balanced, spec.seed)
    head_acc = float((np.asarray(head_pred) == val_y).mean())
    small = int(np.bincount(val_y, minlength=len(data.classes)).min()) < CV_BELOW
    meta.update(head_C=head.C, head_views=views, head_val_acc=round(head_acc, 5),
                head_cv_acc={str(c): round(a, 5) for c, a in head.cv_acc.items()})
    # The best epoch is the maximum over many epochs on the same few images, so it is optimistic: a fine-tuned
    # model is kept only when it beats the one-shot linear head clearly (docs/accuracy.md: on hymenoptera the
    # head equalled or beat fine-tuning in every row where the epochs won by a single image).
    wins, losses, needed = epochs_margin(np.asarray(head_pred) == val_y, np.asarray(best["pred"]) == val_y)
    linear = spec.resolved_mode() == "linear"
    use_head = small or linear or wins - losses < needed
    reason = ("too few validation images a class to compare" if small else "mode linear" if linear else
              f"linear head {head_acc:.3f} on {len(val_y)} validation images against the best epoch ({best['epoch']}) "
              f"{best['val_acc']:.3f}: the epochs won {wins} and lost {losses} of the images they disagree on, and a "
              f"fine-tuned model is kept only with {needed:.1f} more wins than losses")
    log.info("kept the %s: %s", "linear head" if use_head else f"model of epoch {best['epoch']}", reason)
    if use_head:
        meta.update(selected="linear_head", selection_val_acc=round(head_acc, 5), estimated_acc=round(head_acc, 5))
    if use_head:
        holdout = _with_head(fresh, head)
        if not spec.refit:
            return Outcome(holdout, head_pred, meta)
        final, calibration_set = _all_data_head(cache, data, balanced, spec.seed, views)
        cv_acc = max(final.cv_acc.values())
        meta.update(refit=True, head_C=final.C, cv_acc=round(cv_acc, 5))
        if small:  # too few held-out images to trust: the all-data k-fold accuracy is the estimate
            meta.update(estimate="cv", estimated_acc=round(cv_acc, 5))
        return Outcome(_with_head(fresh, final), head_pred, meta, holdout, calibration_set=calibration_set)
    kept = Outcome(selected, best["pred"], meta, holdout_epoch=best["epoch"], trunk_changed=tuned)
    if not spec.refit:
        return kept
    if tuned and cache.train_maps is None:
        meta["refit_skipped"] = "fine-tuned on the fly (activations too large to cache): not trained twice"
        return kept
    model = _refit_epochs(fresh, cache, data, spec, best["epoch"], weight, should_stop)
    meta.update(refit=True, refit_epochs=best["epoch"])
    return Outcome(model, best["pred"], meta, selected, best["epoch"], tuned)
