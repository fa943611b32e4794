"""The pure training core: frozen-trunk warm-up, then fine-tune the last stages; best epoch kept.

No Flask, Celery or SQLAlchemy here: progress goes out through a callback, cancellation comes in through one.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from worker.core.backbones import BACKBONES, Classifier, build_model
from worker.core.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, save_model_artifact
from worker.core.dataset import Dataset, Split, load_dataset
from worker.core.metrics import classification_report
from worker.core.transforms import Preprocessing, eval_batch, train_batch

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]


class Cancelled(Exception):
    """should_stop() asked the run to stop; the last checkpoint is kept."""


@dataclass
class TrainSpec:
    """Hyper-parameters of a training run (the job's params)."""

    backbone: str = "resnet18"
    pretrained: bool = True
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-3
    image_size: int = 224
    val_split: float = 0.2
    seed: int = 0
    freeze_epochs: int | None = None  # None: 40% of the epochs (at least 1) when pretrained, 0 otherwise
    label_smoothing: float = 0.1
    weight_decay: float = 1e-4

    def frozen_phase(self) -> int:
        """Epochs trained with the whole trunk frozen."""
        if not self.pretrained:
            return 0
        if self.freeze_epochs is not None:
            return min(self.freeze_epochs, self.epochs)
        return max(1, round(self.epochs * 0.4))


@dataclass
class TrainResult:
    """What a finished run produced."""

    model_path: Path
    classes: list[str]
    metrics: dict[str, Any]
    skipped_files: list[dict[str, str]] = field(default_factory=list)


def _lr_lambdas(spec: TrainSpec) -> list[Callable[[int], float]]:
    """Per-epoch multipliers for (head, trunk): flat during the frozen phase, cosine while fine-tuning."""
    frozen = spec.frozen_phase()
    tuned = max(1, spec.epochs - frozen)

    def cosine(epoch: int) -> float:
        step = epoch - frozen
        return 0.5 * (1 + math.cos(math.pi * step / tuned)) if step >= 0 else 1.0

    trunk_scale = 0.1 if spec.pretrained else 1.0  # pretrained trunks move slowly or they forget ImageNet
    return [cosine, lambda e: trunk_scale * cosine(e) if e >= frozen else 0.0]


def _frozen_stages(model: Classifier, spec: TrainSpec, epoch: int) -> int:
    if not spec.pretrained:
        return 0
    if epoch < spec.frozen_phase():
        return len(model.stages)
    return len(model.stages) - BACKBONES[spec.backbone].finetune_stages


def _set_trainable(model: Classifier, frozen: int) -> None:
    model.train()
    for i, stage in enumerate(model.stages):
        stage.requires_grad_(i >= frozen)
        if i < frozen:
            stage.eval()  # keep ImageNet batch-norm statistics in frozen stages


def train_one_epoch(
    model: Classifier, split: Split, prep: Preprocessing, optimizer: torch.optim.Optimizer, spec: TrainSpec,
    frozen: int, gen: torch.Generator, should_stop: Callable[[], bool],
) -> tuple[float, float]:
    """One pass over the training split; returns (mean loss, accuracy)."""
    _set_trainable(model, frozen)
    order = torch.randperm(len(split), generator=gen).tolist()
    labels = torch.tensor(split.labels)
    total_loss, correct = 0.0, 0
    for start in range(0, len(order), spec.batch_size):
        if should_stop():
            raise Cancelled()
        idx = order[start : start + spec.batch_size]
        x = train_batch([split.images[i] for i in idx], prep, gen)
        y = labels[idx]
        logits = model(x, frozen)
        loss = F.cross_entropy(logits, y, label_smoothing=spec.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == y).sum())
    return total_loss / len(split), correct / len(split)


@torch.inference_mode()
def evaluate(model: Classifier, split: Split, prep: Preprocessing, batch_size: int) -> tuple[float, float, np.ndarray]:
    """Loss, accuracy and predicted labels on a split with the eval transform."""
    model.eval()
    labels = torch.tensor(split.labels)
    preds, total_loss = [], 0.0
    for start in range(0, len(split), batch_size):
        logits = model(eval_batch(split.images[start : start + batch_size], prep))
        y = labels[start : start + batch_size]
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        preds.append(logits.argmax(1))
    pred = torch.cat(preds).numpy()
    return total_loss / len(split), float((pred == labels.numpy()).mean()), pred


def _optimizer(model: Classifier, spec: TrainSpec) -> torch.optim.Optimizer:
    trunk = [p for stage in model.stages for p in stage.parameters()]
    return torch.optim.AdamW(
        [{"params": list(model.head.parameters())}, {"params": trunk}],
        lr=spec.learning_rate, weight_decay=spec.weight_decay,
    )


def fit(
    data_dir: str | Path, spec: TrainSpec, workdir: Path, model_dir: Path,
    on_progress: ProgressFn = lambda _: None, should_stop: Callable[[], bool] = lambda: False,
    resnet18_weights: str | None = None, max_pixels: int | None = None,
) -> TrainResult:
    """Train on data_dir, checkpoint every epoch into workdir, write the best model into model_dir."""
    torch.manual_seed(spec.seed)
    info = BACKBONES.get(spec.backbone)
    if info is None:
        raise ValueError(f"unknown backbone {spec.backbone!r}")
    prep = Preprocessing.for_size(spec.image_size, info.mean, info.std)
    started = time.monotonic()
    data: Dataset = load_dataset(
        data_dir, spec.val_split, spec.seed, prep.resize, max_pixels,
        on_file=lambda done, total: on_progress({"phase": "loading", "done": done, "total": total}),
    )
    model = build_model(spec.backbone, len(data.classes), spec.pretrained, resnet18_weights)
    optimizer = _optimizer(model, spec)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambdas(spec))
    gen = torch.Generator().manual_seed(spec.seed)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val_acc": -1.0}
    ckpt_path = workdir / CHECKPOINT_NAME
    start_epoch = 0
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        if state["classes"] == data.classes and state["config"] == asdict(spec):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            gen.set_state(state["rng"])
            history, best, start_epoch = state["history"], state["best"], state["epoch"]
            log.info("resuming from %s at epoch %d", ckpt_path, start_epoch + 1)
    for epoch in range(start_epoch, spec.epochs):
        t0 = time.monotonic()
        frozen = _frozen_stages(model, spec, epoch)
        train_loss, train_acc = train_one_epoch(model, data.train, prep, optimizer, spec, frozen, gen, should_stop)
        scheduler.step()
        val_loss, val_acc, pred = evaluate(model, data.val, prep, spec.batch_size * 2)
        entry = {
            "epoch": epoch + 1, "train_loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
            "val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5), "seconds": round(time.monotonic() - t0, 2),
            "trainable_stages": len(model.stages) - frozen,
        }
        history.append(entry)
        if val_acc > best["val_acc"]:
            best = {"val_acc": val_acc, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict()), "pred": pred.tolist()}
        save_checkpoint(
            ckpt_path, model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            epoch=epoch + 1, config=asdict(spec), classes=data.classes, history=history, best=best, rng=gen.get_state(),
        )
        mean_s = sum(h["seconds"] for h in history) / len(history)
        log.info("epoch %d/%d %s", epoch + 1, spec.epochs, entry)
        on_progress({
            "phase": "training", "epoch": epoch + 1, "epochs": spec.epochs, "history": history,
            "best_val_acc": best["val_acc"], "eta_s": round(mean_s * (spec.epochs - epoch - 1), 1),
        })
    model.load_state_dict(best["state"])
    report = classification_report(data.val.labels, best["pred"], data.classes)
    metrics = {
        "history": history, "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
        "final_val_acc": history[-1]["val_acc"], "train_images": len(data.train), "val_images": len(data.val),
        "seconds": round(time.monotonic() - started, 2), **report,
    }
    meta = {
        "backbone": spec.backbone, "classes": data.classes, "image_size": spec.image_size,
        "preprocessing": prep.to_dict(), "metrics": metrics, "params": asdict(spec),
    }
    path = save_model_artifact(model_dir, model, meta)
    return TrainResult(model_path=path, classes=data.classes, metrics=metrics, skipped_files=data.skipped)

