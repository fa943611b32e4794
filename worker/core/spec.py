"""Hyper-parameters of a training run and the schedule they imply: phases, learning rates, stopping."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from graft.shared.params import MODES, train_defaults
from graft.worker.core.backbones import BACKBONES, Classifier
from graft.worker.core.inspection import IMBALANCE_RATIO

log = logging.getLogger(__name__)

AUTO_TIME_BUDGET_S = 600.0
DEFAULTS = train_defaults()  # request parameters default as the API does (graft.shared.params is their one home)


@dataclass
class TrainSpec:
    """Hyper-parameters of a training run (the job's params)."""

    backbone: str = DEFAULTS["backbone"]
    pretrained: bool = DEFAULTS["pretrained"]
    epochs: int = DEFAULTS["epochs"]
    batch_size: int = DEFAULTS["batch_size"]
    learning_rate: float = DEFAULTS["learning_rate"]
    image_size: int | None = DEFAULTS["image_size"]  # None: the backbone's own input size
    val_split: float = DEFAULTS["val_split"]
    seed: int = DEFAULTS["seed"]
    freeze_epochs: int | None = DEFAULTS["freeze_epochs"]  # None: 40% of epochs (at least 1) if pretrained, else 0
    mode: str = DEFAULTS["mode"]
    time_budget_s: float | None = DEFAULTS["time_budget_s"]  # auto: 600 s unless set; other modes: no limit unless set
    patience: int = DEFAULTS["patience"]  # fine-tune epochs with no better val accuracy before stopping; 0: never
    views: int = DEFAULTS["views"]  # augmented views cached per training image (besides the plain one)
    refit: bool = DEFAULTS["refit"]  # train the chosen recipe again on train + val (worker.core.refit)
    # Internal only (not request parameters):
    cache_mb: int = 1536  # most memory the cached trunk activations may take; past it, fine-tune on the fly
    label_smoothing: float = 0.1
    weight_decay: float = 1e-4

    def resolved_mode(self) -> str:
        """The mode actually used: a trunk trained from scratch has nothing to freeze, so "full"."""
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {MODES}")
        return self.mode if self.pretrained else "full"

    def frozen_phase(self) -> int:
        """Epochs trained with the whole trunk frozen (the head-only phase)."""
        mode = self.resolved_mode()
        if mode == "linear":
            return self.epochs
        if not self.pretrained:
            return 0
        if self.freeze_epochs is not None:
            return min(self.freeze_epochs, self.epochs)
        return max(1, round(self.epochs * 0.4))

    def budget_s(self) -> float | None:
        """Wall-time budget for the run, if any."""
        return self.time_budget_s if self.time_budget_s is not None or self.mode != "auto" else AUTO_TIME_BUDGET_S


def concrete(spec: TrainSpec, backbone: str) -> TrainSpec:
    """spec with a named backbone (in place of auto) and its own input size when image_size is unset."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}")
    return replace(spec, backbone=backbone, image_size=spec.image_size or BACKBONES[backbone].image_size)


def lr_lambdas(spec: TrainSpec) -> list[Callable[[int], float]]:
    """Per-epoch multipliers for (head, trunk): flat during the frozen phase, cosine while fine-tuning."""
    frozen = spec.frozen_phase()
    tuned = max(1, spec.epochs - frozen)

    def cosine(epoch: int) -> float:
        step = epoch - frozen
        return 0.5 * (1 + math.cos(math.pi * step / tuned)) if step >= 0 else 1.0

    trunk_scale = 0.1 if spec.pretrained else 1.0  # pretrained trunks move slowly or they forget ImageNet
    return [cosine, lambda e: trunk_scale * cosine(e) if e >= frozen else 0.0]


def class_weights(labels: list[int], num_classes: int) -> torch.Tensor | None:
    """Inverse-frequency loss weights when the largest class outnumbers the smallest over IMBALANCE_RATIO times."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if counts.min() == 0 or counts.max() / counts.min() <= IMBALANCE_RATIO:
        return None
    weights = counts.sum() / (num_classes * counts)
    log.info("classes imbalanced (%s): loss weights %s", counts.tolist(), np.round(weights, 3).tolist())
    return torch.tensor(weights, dtype=torch.float32)


def frozen_stages(model: Classifier, spec: TrainSpec, epoch: int) -> int:
    """Stages kept frozen in this epoch: all (head phase), all but the last few (fine-tune), none (full)."""
    if not spec.pretrained:
        return 0
    if epoch < spec.frozen_phase():
        return len(model.stages)
    if spec.resolved_mode() == "full":
        return 0
    return len(model.stages) - BACKBONES[spec.backbone].finetune_stages


def stop_reason(spec: TrainSpec, epoch: int, history: list[dict[str, Any]], best_epoch: int, elapsed: float) -> str | None:
    """Why not to run epoch (0-based) at all: time budget, or no progress for `patience` fine-tune epochs."""
    budget = spec.budget_s()
    if history and budget is not None and elapsed + history[-1]["seconds"] > budget:
        return f"time budget of {budget:.0f} s reached"
    tuned = [h for h in history if h["epoch"] > spec.frozen_phase()]
    if spec.patience and len(tuned) >= spec.patience and epoch - best_epoch >= spec.patience:
        return f"no better val accuracy for {spec.patience} epochs"
    return None
