"""The label audit at inspection, before any training: the frozen trunk's features of every image, computed once.

The trunk is the one a default training job on this dataset would choose (`backbone: auto` for its size), its
plain and mirrored views of every image are written to the worker's cache under the keys the training job reads
(features.build_cache), so the job that follows reuses them instead of running the trunk again. Pure: no Flask,
Celery or SQLAlchemy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from graft.worker.core.audit import audit_labels
from graft.worker.core.backbones import BACKBONES, build_model
from graft.worker.core.dataset import load_dataset
from graft.worker.core.features import build_cache
from graft.worker.core.pipeline import Caching
from graft.worker.core.selection import resolve_backbone
from graft.worker.core.spec import TrainSpec
from graft.worker.core.transforms import Preprocessing
from graft.worker.core.trunk import make_trunk, trunk_id

@dataclass
class DatasetAudit:
    """The audit of a dataset's labels (audit.audit_labels's result, None when too few images) and what ran it."""

    audit: dict[str, Any] | None
    backbone: str
    views_computed: int
    views_reused: int


def audit_dataset(data_dir: str | Path, caching: Caching, max_pixels: int | None = None,
                  roots: Sequence[Path] | None = None) -> DatasetAudit:
    """Audit the labels of data_dir on the default job's frozen trunk, leaving its views in caching.store."""
    spec, _ = resolve_backbone(TrainSpec(), data_dir, roots)
    info = BACKBONES[spec.backbone]
    prep = Preprocessing.for_size(spec.image_size, info.mean, info.std)
    data = load_dataset(data_dir, spec.val_split, spec.seed, prep.resize, max_pixels, roots=roots,
                        store=caching.store)
    model = build_model(spec.backbone, len(data.classes), pretrained=True).eval()
    split_at = len(model.stages) - info.finetune_stages  # the training job's cut (train._prepare_cache): same keys
    key = trunk_id(model, split_at, prep)  # the stages' weights only: the random head does not enter the keys
    stats: dict[str, Any] = {}
    cache = build_cache(model, data.train, data.val, prep, 1, split_at, False, spec.batch_size, spec.seed,
                        lambda n: None,
                        lambda: make_trunk(model, split_at, prep, caching.runtime, caching.ir_dir, key),
                        caching.store, key, stats)
    features = torch.cat([cache.train_pooled[0], cache.val_pooled]).numpy()
    audit = audit_labels(features, list(data.train.labels) + list(data.val.labels),
                         list(data.train.paths) + list(data.val.paths), data.classes, spec.seed)
    return DatasetAudit(audit, spec.backbone, int(stats.get("views_computed", 0)), int(stats.get("views_reused", 0)))
