"""What a model knows about its own reliability, fitted at the end of training and applied to every prediction:
the calibration temperature, per-class precision curves (target_precision), the kNN out-of-distribution scorer
(ood_score, label `unknown`), and the label audit of its training images. Pure: no Flask, Celery or SQLAlchemy.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from graft.shared.params import UNKNOWN
from graft.worker.core.audit import audit_labels
from graft.worker.core.backbones import Classifier
from graft.worker.core.calibration import calibrate, class_thresholds, softmax
from graft.worker.core.dataset import Split
from graft.worker.core.features import ViewCache
from graft.worker.core.ood import KNNScorer, fit_knn, threshold_for, unit_rows
from graft.worker.core.transforms import Preprocessing, eval_batch

log = logging.getLogger(__name__)

BANK_KEY = "ood_bank"  # the model.pt entry holding the scorer's training features (a tensor, not in model.json)


class WithFeatures(nn.Module):
    """model(x) and its pooled features side by side: (N, classes + D), one output every runtime can return."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.features(x)
        return torch.cat([self.model.classify(feats), feats], dim=1)


@torch.no_grad()
def _pooled(model: Classifier, split: Split, prep: Preprocessing, batch: int) -> torch.Tensor:
    model.eval()
    if len(split) == 0:
        return torch.zeros(0, model.head.in_features)
    return torch.cat([model.features(eval_batch(split.images[i : i + batch], prep))
                      for i in range(0, len(split), batch)])


@torch.no_grad()
def _features(model: Classifier, split: Split, pooled: torch.Tensor | None, maps: torch.Tensor | None, split_at: int,
              trunk_unchanged: bool, prep: Preprocessing, batch: int) -> torch.Tensor:
    """Plain-view pooled features of one split under model, from its cached pooled features or maps where valid."""
    if pooled is not None and trunk_unchanged:
        return pooled
    if maps is not None:  # only the stages after split_at changed: run those
        return torch.cat([model.pool(model.run_stages(maps[i : i + batch].permute(0, 3, 1, 2), split_at))
                          for i in range(0, len(maps), batch)])
    return _pooled(model, split, prep, batch)


@torch.no_grad()
def final_features(model: Classifier, train: Split, val: Split, cache: ViewCache | None, trunk_unchanged: bool,
                   prep: Preprocessing, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-view pooled features of train and val under the final model, reusing the cache where it is valid."""
    model.eval()
    if cache is None:
        return _pooled(model, train, prep, batch), _pooled(model, val, prep, batch)
    train_maps = None if cache.train_maps is None else cache.train_maps[0]
    return (_features(model, train, cache.train_pooled[0], train_maps, cache.split_at, trunk_unchanged, prep, batch),
            _features(model, val, cache.val_pooled, cache.val_maps, cache.split_at, trunk_unchanged, prep, batch))


def fit_trust(model: Classifier, train: Split, val: Split, classes: Sequence[str], cache: ViewCache | None,
              trunk_unchanged: bool, prep: Preprocessing, batch: int, seed: int,
              holdout: Classifier | None = None, holdout_unchanged: bool = True,
              calibration_set: tuple[np.ndarray, np.ndarray] | None = None,
              ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(meta to store in the model, tensors to store beside it, training-job metrics) after training.

    Calibration and the precision curves use the validation logits of holdout, the selected model before any
    refit on train + val (default: model itself), so they stay out of sample, or calibration_set, a refit linear
    head's out-of-fold (logits, labels) over every image at its own C (refit.Outcome); the OOD bank uses train and val
    features of the final model (trunk_unchanged: its trunk is the cached one); the audit uses the frozen ImageNet
    trunk's features when cached (not fitted to the labels it audits), else the final model's.
    """
    train_f, val_f = final_features(model, train, val, cache, trunk_unchanged, prep, batch)
    held, held_f = model, val_f
    if holdout is not None and holdout is not model:
        held = holdout.eval()
        with torch.no_grad():
            held_f = (_pooled(held, val, prep, batch) if cache is None else
                      _features(held, val, cache.val_pooled, cache.val_maps, cache.split_at, holdout_unchanged, prep,
                                batch))
    if calibration_set is not None:
        calibration = calibrate(*calibration_set, classes)
        calibration["source"] = "out-of-fold logits of the refit head over every image"
    else:
        with torch.no_grad():
            val_logits = held.eval().classify(held_f).float().numpy()
        calibration = calibrate(val_logits, np.asarray(val.labels), classes)
        calibration["source"] = "validation logits of the model before any refit"
    scorer = fit_knn(torch.cat([train_f, val_f]).float().numpy(), seed=seed)
    if not trunk_unchanged and len(val):
        scorer.threshold, scorer.rule = _held_out_threshold(
            held, train, held_f, scorer.k, cache, holdout_unchanged if held is holdout else False, prep, batch)
    audit_f = torch.cat([cache.train_pooled[0], cache.val_pooled]) if cache is not None else torch.cat([train_f, val_f])
    try:
        audit = audit_labels(audit_f.float().numpy(), list(train.labels) + list(val.labels),
                             list(train.paths) + list(val.paths), classes, seed)
    except Exception:  # noqa: BLE001 - the audit is advice: its failure must not fail a trained model
        log.exception("label audit failed; the model is kept without it")
        audit = None
    meta = {"calibration": calibration, "ood": scorer.meta()}
    summary = {k: calibration[k] for k in ("temperature", "kept", "why", "source", "ece_before", "ece_after", "images")}
    metrics = {"calibration": summary, "ood": scorer.meta(), "label_audit": audit}
    return meta, {BANK_KEY: torch.from_numpy(scorer.bank).to(torch.float16)}, metrics


def _held_out_threshold(held: Classifier, train: Split, held_f: torch.Tensor, k: int, cache: ViewCache | None,
                        unchanged: bool, prep: Preprocessing, batch: int) -> tuple[float, str]:
    """(threshold, rule) from validation images scored against the training images under held.

    A fine-tuned trunk was fitted on its training images, so their leave-one-out scores are smaller than an unseen
    image's; held (the model before any refit) never saw the validation images, which makes theirs honest.
    """
    if cache is None:
        train_h = _pooled(held, train, prep, batch)
    else:
        maps = None if cache.train_maps is None else cache.train_maps[0]
        train_h = _features(held, train, cache.train_pooled[0], maps, cache.split_at, unchanged, prep, batch)
    bank = KNNScorer(unit_rows(train_h.float().numpy()), k, 0.0, "")
    threshold, rule = threshold_for(bank.score(held_f.float().numpy()))
    return threshold, f"fine-tuned trunk, validation images against the training images: {rule}"


@dataclass
class Options:
    """A predict job's trust options."""

    threshold: float | None = None
    target_precision: float | None = None
    reject_ood: bool = True


@dataclass
class Trust:
    """Applied by the Predictor: temperature-scaled probabilities, per-class thresholds, OOD rejection."""

    temperature: float = 1.0
    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    scorer: KNNScorer | None = None

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Trust":
        """From a loaded artifact's meta; a model trained before calibration existed gets the identity."""
        calibration = meta.get("calibration") or {}
        scorer = None
        if meta.get("ood") and meta.get(BANK_KEY) is not None:
            scorer = KNNScorer.from_meta(meta["ood"], meta[BANK_KEY].float().numpy())
        return cls(float(calibration.get("temperature", 1.0)), calibration.get("curves", {}), scorer)

    def network(self, model: Classifier) -> nn.Module:
        """The module a runtime runs: the model, with its pooled features appended when there is a scorer."""
        return WithFeatures(model) if self.scorer is not None else model

    def split(self, outputs: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
        """A runner's outputs as (logits, features or None)."""
        if self.scorer is None:
            return outputs, None
        return outputs[:, :num_classes], outputs[:, num_classes:]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities."""
        return softmax(logits, self.temperature)

    def ood_scores(self, features: np.ndarray | None, rows: int) -> list[float | None]:
        """Each row's ood_score (None for every row without a scorer)."""
        if self.scorer is None or features is None:
            return [None] * rows
        return [round(float(s), 5) for s in self.scorer.score(features)]

    def judge(self, ranked: list[dict[str, Any]], ood_score: float | None, options: Options) -> dict[str, Any]:
        """label, ood_score and reason for one row whose classes are ranked (calibrated probabilities)."""
        label, confidence = ranked[0]["label"], ranked[0]["confidence"]
        if ood_score is not None and self.scorer is not None:
            if options.reject_ood and ood_score > self.scorer.threshold:
                return {"label": UNKNOWN, "ood_score": ood_score,
                        "reason": f"unlike the training images: ood_score {ood_score:.4f} > {self.scorer.threshold:.4f}"}
        bar, why = None, ""
        if options.threshold is not None:
            bar, why = options.threshold, f"threshold {options.threshold:g}"
        if options.target_precision is not None and label in self.curves:
            own = class_thresholds({label: self.curves[label]}, options.target_precision)[label]
            if bar is None or own > bar:
                bar, why = own, f"{label!r} threshold {own:.4f} for precision {options.target_precision:g}"
        if bar is not None and confidence < bar:
            return {"label": UNKNOWN, "ood_score": ood_score, "reason": f"confidence {confidence:.4f} below the {why}"}
        return {"label": label, "ood_score": ood_score, "reason": None}
