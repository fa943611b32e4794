"""Frozen-trunk caching: run the frozen stages once per view, then train on their outputs for free.

With the trunk frozen, an epoch only needs the trunk's outputs, and those do not change between epochs.
So we compute them once for the plain view and a few augmented views of every image. Head epochs then
cost a matrix multiply, and fine-tune epochs run only the unfrozen last stages.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from graft.worker.core.backbones import Classifier
from graft.worker.core.cache_store import CacheStore
from graft.worker.core.dataset import Split
from graft.worker.core.pipeline import FEATURE_FORMAT, trunk_pass
from graft.worker.core.transforms import Preprocessing
from graft.worker.core.trunk import TorchTrunk, TrunkGraph, TrunkRunner
from graft.worker.core.stop import Stopped

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

    def without(self, train: Sequence[int], val: Sequence[int]) -> "ViewCache":
        """This cache less the rows of these train and val images (files found unreadable during the pass)."""
        if not train and not val:
            return self
        gone_train, gone_val = set(train), set(val)
        keep_train = torch.tensor([i for i in range(self.train_pooled.shape[1]) if i not in gone_train], dtype=torch.long)
        keep_val = torch.tensor([i for i in range(len(self.val_pooled)) if i not in gone_val], dtype=torch.long)

        def pick(t: torch.Tensor | None, dim: int, keep: torch.Tensor) -> torch.Tensor | None:
            return None if t is None else t.index_select(dim, keep)

        return ViewCache(split_at=self.split_at, train_pooled=pick(self.train_pooled, 1, keep_train),
                         val_pooled=pick(self.val_pooled, 0, keep_val), train_maps=pick(self.train_maps, 1, keep_train),
                         val_maps=pick(self.val_maps, 0, keep_val),
                         val_mirror_pooled=pick(self.val_mirror_pooled, 0, keep_val))


def map_bytes(model: Classifier, split_at: int, size: int) -> int:
    """Bytes of one image's activations after stages[:split_at] (float32)."""
    with torch.no_grad():
        probe = model.eval().run_stages(torch.zeros(1, 3, size, size), 0, split_at)
    return probe.numel() * probe.element_size()


def build_cache(
    model: Classifier, train: Split, val: Split, prep: Preprocessing, views: int, split_at: int, keep_maps: bool,
    batch_size: int, seed: int, tick: Callable[[int], None], trunk: Callable[[], TrunkRunner] | None = None,
    store: CacheStore | None = None, key: str | None = None, stats: dict[str, Any] | None = None,
) -> ViewCache:
    """Run the frozen trunk (eval mode) over 1 + views views of train and the plain view of val.

    View 0 is the plain centre crop, view 1 its mirror image, views >= 2 seeded random crops (pipeline.make_crop):
    a linear head learns best from plain and mirrored views (docs/accuracy.md); with views >= 1 val's mirror image
    is pooled too (no maps kept), for the refit head. trunk builds the runner, only if a view must be computed
    (default: eager PyTorch). With store and key (trunk.trunk_id), views an earlier job computed for the same file
    content are read from the store, and the others are written to it. stats, when given, receives the runtime and
    how many views were computed and reused.
    """
    model.eval()
    build = trunk or (lambda: TorchTrunk(TrunkGraph(model, split_at, prep)))
    made: list[TrunkRunner] = []

    def once() -> TrunkRunner:  # one runner for both passes (an OpenVINO compile is not free)
        if not made:
            made.append(build())
        return made[0]

    with torch.no_grad():
        probe = model.run_stages(torch.zeros(1, 3, prep.crop, prep.crop), 0, split_at)
    shapes = ((probe.shape[2], probe.shape[3], probe.shape[1]), model.head.in_features)
    items = [(train, i, v) for v in range(1 + views) for i in range(len(train))] + [(val, i, 0) for i in range(len(val))]
    mirrors = [(val, i, 1) for i in range(len(val))] if views else []

    def keys(of: list) -> list[str] | None:
        return [_key(key, split, i, v, seed) for split, i, v in of] if store is not None and key else None

    main_stats: dict[str, Any] = {}
    out = trunk_pass(once, shapes, prep, items, keep_maps, batch_size, seed, tick, store, keys(items), main_stats)
    mirror_stats: dict[str, Any] = {}
    val_mirror = None
    if mirrors:  # pooled features only: the refit head reads them, no epoch runs stages on them
        extra = trunk_pass(once, shapes, prep, mirrors, False, batch_size, seed, tick, store, keys(mirrors), mirror_stats)
        val_mirror = torch.from_numpy(extra.pooled)
    if stats is not None:
        stats.update(runtime=main_stats.get("runtime") or mirror_stats.get("runtime"),
                     **{k: main_stats.get(k, 0) + mirror_stats.get(k, 0)
                        for k in ("views_computed", "views_reused", "seconds")})
        stats["seconds"] = round(stats["seconds"], 2)
    pooled, maps = torch.from_numpy(out.pooled), None if out.maps is None else torch.from_numpy(out.maps)
    n = len(train) * (1 + views)
    return ViewCache(
        split_at=split_at, train_pooled=pooled[:n].unflatten(0, (1 + views, len(train))), val_pooled=pooled[n:],
        train_maps=None if maps is None else maps[:n].unflatten(0, (1 + views, len(train))),
        val_maps=None if maps is None else maps[n:], val_mirror_pooled=val_mirror,
    )


def _key(trunk_key: str, split: Split, index: int, view: int, seed: int) -> str:
    """The store key of one view: the file's content, the trunk, and for an augmented view its seed and number.

    View 1 is the mirror image since FEATURE_FORMAT "feat2" (a seeded random crop before): the format and the tag
    both keep entries of the old view 1 from being read as mirror images.
    """
    tag = "plain" if view == 0 else ("mirror" if view == 1 else f"aug{seed}.{view}")
    return f"{FEATURE_FORMAT}:{trunk_key}:{split.digests[index]}:{tag}"


def cached_epoch(
    model: Classifier, inputs: torch.Tensor, labels: torch.Tensor, start_stage: int | None,
    optimizer: torch.optim.Optimizer, batch_size: int, label_smoothing: float, gen: torch.Generator,
    should_stop: Callable[[], bool], weight: torch.Tensor | None = None,
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
            raise Stopped()
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
