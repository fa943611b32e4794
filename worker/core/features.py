"""Frozen-trunk caching: run the frozen stages once per view, then train on their outputs for free.

With the trunk frozen, an epoch only needs the trunk's outputs, and those do not change between epochs.
So we compute them once for the plain view and a few augmented views of every image. Head epochs then
cost a matrix multiply, and fine-tune epochs run only the unfrozen last stages.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from graft.worker.core.backbones import Classifier
from graft.worker.core.dataset import Split
from graft.worker.core.transforms import Preprocessing, eval_batch, train_batch

log = logging.getLogger(__name__)


@dataclass
class ViewCache:
    """Frozen-trunk outputs: pooled features, and the activations at split_at when fine-tuning from them."""

    split_at: int
    train_pooled: torch.Tensor  # (views, N, D); view 0 is the plain eval crop, view 1 its mirror image
    val_pooled: torch.Tensor  # (N_val, D)
    train_maps: torch.Tensor | None  # (views, N, H, W, C) after stages[:split_at], stored channels-last
    val_maps: torch.Tensor | None
    val_mirror_pooled: torch.Tensor | None = None  # (N_val, D): the mirrored plain crops (for the refit head)

    @property
    def views(self) -> int:
        """Number of cached views per training image."""
        return self.train_pooled.shape[0]


def map_bytes(model: Classifier, split_at: int, size: int) -> int:
    """Bytes of one image's activations after stages[:split_at] (float32)."""
    with torch.no_grad():
        probe = model.eval().run_stages(torch.zeros(1, 3, size, size), 0, split_at)
    return probe.numel() * probe.element_size()


@torch.no_grad()
def _run_view(
    model: Classifier, split: Split, prep: Preprocessing, split_at: int, keep_maps: bool, batch_size: int,
    gen: torch.Generator | None, tick: Callable[[int], None], mirror: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    pooled, maps = [], []
    for start in range(0, len(split), batch_size):
        images = split.images[start : start + batch_size]
        x = eval_batch(images, prep) if gen is None else train_batch(images, prep, gen)
        if mirror:
            x = x.flip(3).contiguous(memory_format=torch.channels_last)
        h = model.run_stages(x, 0, split_at)
        if keep_maps:
            maps.append(h.permute(0, 2, 3, 1).contiguous())  # stored NHWC: rows index out channels-last
        pooled.append(model.pool(model.run_stages(h, split_at)))
        tick(len(images))
    return torch.cat(pooled), (torch.cat(maps) if keep_maps else None)


def build_cache(
    model: Classifier, train: Split, val: Split, prep: Preprocessing, views: int, split_at: int, keep_maps: bool,
    batch_size: int, seed: int, tick: Callable[[int], None],
) -> ViewCache:
    """Run the frozen stages (eval mode, no autograd) over 1 + views views of train and the plain view of val.

    View 1 is the plain crop's mirror image, the others random crops: a linear head learns best from plain and
    mirrored views (docs/accuracy.md); with views >= 1 val's mirror image is pooled too, for the refit head.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed + 1)  # its own stream: a resumed job rebuilds the same views
    pooled, maps = [], []
    for view in range(1 + views):
        p, m = _run_view(model, train, prep, split_at, keep_maps, batch_size, None if view <= 1 else gen, tick,
                         mirror=view == 1)
        pooled.append(p)
        maps.append(m)
    val_pooled, val_maps = _run_view(model, val, prep, split_at, keep_maps, batch_size, None, tick)
    val_mirror = _run_view(model, val, prep, split_at, False, batch_size, None, tick, mirror=True)[0] if views else None
    return ViewCache(
        split_at=split_at, train_pooled=torch.stack(pooled), val_pooled=val_pooled,
        train_maps=torch.stack(maps) if keep_maps else None, val_maps=val_maps, val_mirror_pooled=val_mirror,
    )


def cached_epoch(
    model: Classifier, inputs: torch.Tensor, labels: torch.Tensor, start_stage: int | None,
    optimizer: torch.optim.Optimizer, batch_size: int, label_smoothing: float, gen: torch.Generator,
    should_stop: Callable[[], bool], stop_exc: type[Exception], weight: torch.Tensor | None = None,
) -> tuple[float, float]:
    """One pass over cached inputs: pooled features (start_stage None) or activations entering start_stage."""
    model.train()
    if start_stage is not None:
        for i, stage in enumerate(model.stages):
            stage.train(i >= start_stage)  # frozen stages keep their ImageNet batch-norm statistics
    order = torch.randperm(len(labels), generator=gen)
    total_loss, correct = 0.0, 0
    for begin in range(0, len(order), batch_size):
        if should_stop():
            raise stop_exc()
        idx = order[begin : begin + batch_size]
        logits = _logits(model, inputs[idx], start_stage)
        y = labels[idx]
        loss = F.cross_entropy(logits, y, weight=weight, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == y).sum())
    return total_loss / len(labels), correct / len(labels)


def _logits(model: Classifier, inputs: torch.Tensor, start_stage: int | None) -> torch.Tensor:
    if start_stage is None:
        return model.classify(inputs)
    x = inputs.permute(0, 3, 1, 2)  # NHWC storage seen as NCHW with channels-last strides: no copy
    return model.classify(model.pool(model.run_stages(x, start_stage)))


@torch.no_grad()
def cached_eval(
    model: Classifier, inputs: torch.Tensor, labels: torch.Tensor, start_stage: int | None, batch_size: int
) -> tuple[float, float, torch.Tensor]:
    """Loss, accuracy and predictions on cached validation inputs."""
    model.eval()
    logits = torch.cat([_logits(model, inputs[i : i + batch_size], start_stage)
                        for i in range(0, len(labels), batch_size)])
    pred = logits.argmax(1)
    return float(F.cross_entropy(logits, labels)), float((pred == labels).float().mean()), pred
