"""Out-of-sample predictions: the selected model's answer on each validation image, with its confidence.

The model is the one selected BEFORE any refit on train + validation images (refit.Outcome.holdout), whose
validation answers are out of sample.

They are the predictions behind the reported val_acc and confusion matrix (the predicted labels are the ones the
best epoch recorded), so a user can open any cell of the matrix and see the images it counts.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from graft.worker.core.backbones import Classifier
from graft.worker.core.dataset import Split
from graft.worker.core.features import ViewCache
from graft.worker.core.spec import TrainSpec, frozen_stages
from graft.worker.core.transforms import Preprocessing, eval_batch

log = logging.getLogger(__name__)


def _head(model: Classifier, inputs: torch.Tensor, start: int | None) -> torch.Tensor:
    """Logits from cached pooled features (start None) or from cached NHWC activations entering stage start."""
    if start is None:
        return model.classify(inputs)
    return model.classify(model.pool(model.run_stages(inputs.permute(0, 3, 1, 2), start)))


@torch.no_grad()
def _val_probabilities(model: Classifier, val: Split, cache: ViewCache | None, prep: Preprocessing, spec: TrainSpec,
                       best_epoch: int) -> torch.Tensor:
    """Softmax over the validation split, computed the way the best epoch evaluated it (from the cache if it did).

    best_epoch 0 is the linear head fitted on the cached pooled features (worker.core.refit).
    """
    model.eval()
    frozen = frozen_stages(model, spec, max(best_epoch - 1, 0))
    step = spec.batch_size * 2
    if cache is not None and (best_epoch == 0 or frozen == len(model.stages)):
        inputs, start = cache.val_pooled, None
    elif cache is not None and cache.val_maps is not None and frozen == cache.split_at:
        inputs, start = cache.val_maps, frozen
    else:
        logits = [model(eval_batch(val.images[i : i + step], prep)) for i in range(0, len(val), step)]
        return torch.softmax(torch.cat(logits), 1)
    logits = [_head(model, inputs[i : i + step], start) for i in range(0, len(val), step)]
    return torch.softmax(torch.cat(logits), 1)


def val_predictions(model: Classifier, val: Split, cache: ViewCache | None, prep: Preprocessing, spec: TrainSpec,
                    classes: Sequence[str], best_epoch: int, predicted: Sequence[int]) -> list[dict[str, Any]]:
    """One record per validation image: file (relative to the dataset), true, predicted, confidence, index."""
    probs = _val_probabilities(model, val, cache, prep, spec, best_epoch)
    disagree = int((probs.argmax(1) != torch.as_tensor(list(predicted))).sum())
    if disagree:  # the recorded labels stay (they make val_acc); the confidences come from the same weights
        log.warning("%d validation prediction(s) differ on re-evaluation (numerical ties)", disagree)
    return [
        {"index": i, "file": val.paths[i], "true": classes[val.labels[i]], "predicted": classes[p],
         "confidence": round(float(probs[i, p]), 5)}
        for i, p in enumerate(predicted)
    ]
