"""The pure training core: frozen-trunk warm-up, then fine-tune the last stages; best epoch kept.

No Flask, Celery or SQLAlchemy here: progress goes out through a callback, cancellation comes in through one.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from graft.shared.thumbs import THUMBS_DIR, keep_bounded
from graft.worker.core.audit import mislabel_issue
from graft.worker.core.backbones import BACKBONES, Classifier, build_model
from graft.worker.core.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, save_model_artifact
from graft.worker.core.dataset import TrainingData, Split, load_dataset
from graft.worker.core.features import ViewCache, build_cache, cached_epoch, cached_eval, map_bytes
from graft.worker.core.trunk import make_trunk, trunk_id
from graft.worker.core.metrics import classification_report
from graft.worker.core.oos import val_predictions
from graft.worker.core.pipeline import Caching
from graft.worker.core.refit import choose_and_refit
from graft.worker.core.selection import resolve_backbone
from graft.worker.core.spec import TrainSpec, class_weights, frozen_stages, lr_lambdas, stop_reason
from graft.worker.core.thumbnails import write_array_thumbnails
from graft.worker.core.transforms import Preprocessing, eval_batch, train_batch
from graft.worker.core.trust import fit_trust
from graft.worker.core.stop import Stopped

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a finished run produced."""

    model_path: Path
    classes: list[str]
    metrics: dict[str, Any]
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)  # out-of-sample, bounded (oos.py)
    val_images: int = 0
    backbone: str = ""  # the backbone actually trained (a job's "auto" resolved)
    image_size: int = 0

    def mislabel_issue(self, job_id: str | None = None) -> dict[str, Any] | None:
        """The label audit as the dataset report's suspected_mislabel warning (None without suspects)."""
        return mislabel_issue(self.metrics.get("label_audit"), job_id)


def _set_trainable(model: Classifier, frozen: int) -> None:
    model.train()
    for i, stage in enumerate(model.stages):
        stage.requires_grad_(i >= frozen)
        if i < frozen:
            stage.eval()  # keep ImageNet batch-norm statistics in frozen stages


def train_one_epoch(
    model: Classifier, split: Split, prep: Preprocessing, optimizer: torch.optim.Optimizer, spec: TrainSpec,
    frozen: int, gen: torch.Generator, should_stop: Callable[[], bool], weight: torch.Tensor | None = None,
) -> tuple[float, float]:
    """One pass over the training split; returns (mean loss, accuracy)."""
    _set_trainable(model, frozen)
    order = torch.randperm(len(split), generator=gen).tolist()
    labels = torch.tensor(split.labels)
    total_loss, correct = 0.0, 0
    for start in range(0, len(order), spec.batch_size):
        if should_stop():
            raise Stopped()
        idx = order[start : start + spec.batch_size]
        x = train_batch([split.images[i] for i in idx], prep, gen)
        y = labels[idx]
        logits = model(x, frozen)
        loss = F.cross_entropy(logits, y, weight=weight, label_smoothing=spec.label_smoothing)
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


def _prepare_cache(
    model: Classifier, data: TrainingData, prep: Preprocessing, spec: TrainSpec, on_progress: ProgressFn,
    should_stop: Callable[[], bool], caching: Caching,
) -> ViewCache | None:
    """Cache frozen-trunk outputs when the mode trains on a frozen trunk (all but "full")."""
    mode = spec.resolved_mode()
    if mode == "full":
        return None
    split_at = len(model.stages) - BACKBONES[spec.backbone].finetune_stages
    fine_tunes = mode != "linear" and spec.frozen_phase() < spec.epochs
    per_view = len(data.train) + len(data.val) / (spec.views + 1)
    need_mb = map_bytes(model, split_at, prep.crop) * per_view * (spec.views + 1) / 2**20
    keep_maps = fine_tunes and need_mb <= spec.cache_mb
    if fine_tunes and not keep_maps:
        log.info("activation cache would need %.0f MB > %d MB: fine-tuning on the fly", need_mb, spec.cache_mb)
    total, done = len(data.train) * (spec.views + 1) + len(data.val) * (2 if spec.views else 1), 0

    def tick(n: int) -> None:
        nonlocal done
        if should_stop():
            raise Stopped()
        data.check()  # an unusable dataset stops the pass as soon as the last image is decoded
        done += n
        on_progress({"phase": "caching", "done": done, "total": total})

    model.eval()
    key = trunk_id(model, split_at, prep)
    return build_cache(model, data.train, data.val, prep, spec.views, split_at, keep_maps, spec.batch_size, spec.seed,
                       tick, lambda: make_trunk(model, split_at, prep, caching.runtime, caching.ir_dir, key),
                       caching.store, key, caching.stats)


def _epoch(
    model: Classifier, data: TrainingData, cache: ViewCache | None, prep: Preprocessing, spec: TrainSpec, epoch: int,
    optimizer: torch.optim.Optimizer, gen: torch.Generator, should_stop: Callable[[], bool],
    weight: torch.Tensor | None = None,
) -> tuple[float, float, float, float, np.ndarray, int]:
    """Train one epoch and evaluate; uses the cache where the trunk is frozen at the cached split."""
    frozen = frozen_stages(model, spec, epoch)
    train_y, val_y = torch.tensor(data.train.labels), torch.tensor(data.val.labels)
    common = (spec.batch_size, spec.label_smoothing, gen, should_stop)
    if cache is not None and frozen == len(model.stages):
        _set_trainable(model, frozen)
        views = cache.train_pooled
        loss, acc = cached_epoch(model, views.flatten(0, 1), train_y.repeat(cache.views), None, optimizer, *common,
                                 weight=weight)
        val = cached_eval(model, cache.val_pooled, val_y, None, spec.batch_size * 4)
    elif cache is not None and cache.train_maps is not None and frozen == cache.split_at:
        _set_trainable(model, frozen)
        maps = cache.train_maps[epoch % cache.views]  # a different cached view each epoch
        loss, acc = cached_epoch(model, maps, train_y, frozen, optimizer, *common, weight=weight)
        val = cached_eval(model, cache.val_maps, val_y, frozen, spec.batch_size * 2)
    else:
        loss, acc = train_one_epoch(model, data.train, prep, optimizer, spec, frozen, gen, should_stop, weight)
        vl, va, vp = evaluate(model, data.val, prep, spec.batch_size * 2)
        val = (vl, va, torch.from_numpy(vp))
    return loss, acc, val[0], val[1], val[2].numpy(), len(model.stages) - frozen


def _start(
    data: TrainingData, spec: TrainSpec, workdir: Path, resnet18_weights: str | None,
) -> tuple[Classifier, torch.optim.Optimizer, Any, torch.Generator, dict[str, Any]]:
    """The model, optimizer, scheduler and generator, restored from workdir's checkpoint when it is this job's.

    The last item is the checkpoint's state (history, best, epoch, elapsed), or {} for a fresh start.
    """
    model = build_model(spec.backbone, len(data.classes), spec.pretrained, resnet18_weights)
    optimizer = _optimizer(model, spec)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(spec))
    gen = torch.Generator().manual_seed(spec.seed)
    ckpt_path = workdir / CHECKPOINT_NAME
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        if state["classes"] == data.classes and state["config"] == asdict(spec):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            gen.set_state(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            log.info("resuming from %s at epoch %d", ckpt_path, state["epoch"] + 1)
            return model, optimizer, scheduler, gen, state
    return model, optimizer, scheduler, gen, {}


def fit(
    data_dir: str | Path, spec: TrainSpec, workdir: Path, model_dir: Path,
    on_progress: ProgressFn = lambda _: None, should_stop: Callable[[], bool] = lambda: False,
    resnet18_weights: str | None = None, max_pixels: int | None = None, roots: Sequence[Path] | None = None,
    caching: Caching | None = None,
) -> TrainResult:
    """Train on data_dir, checkpoint every epoch into workdir, write the best model into model_dir.

    With roots, files whose real path leaves them (symlinks) are skipped and listed, never read. caching says
    where decoded images and trunk outputs are kept between jobs (default: nowhere) and the trunk's runtime.
    """
    caching = caching or Caching()
    torch.manual_seed(spec.seed)
    spec, backbone_choice = resolve_backbone(spec, data_dir, roots)
    info = BACKBONES[spec.backbone]
    mode = spec.resolved_mode()
    prep = Preprocessing.for_size(spec.image_size, info.mean, info.std)
    started = time.monotonic()

    def on_file(done: int, total: int) -> None:
        if should_stop():
            raise Stopped()
        on_progress({"phase": "loading", "done": done, "total": total})

    # Every mode but "full" streams: the trunk pass starts on the first images while the others still decode.
    data: TrainingData = load_dataset(data_dir, spec.val_split, spec.seed, prep.resize, max_pixels, on_file=on_file,
                                      roots=roots, store=caching.store, stream=mode != "full")
    loading_s = time.monotonic() - started
    try:
        model, optimizer, scheduler, gen, resumed = _start(data, spec, workdir, resnet18_weights)
        history: list[dict[str, Any]] = resumed.get("history", [])
        best: dict[str, Any] = resumed.get("best", {"val_acc": -1.0, "epoch": 0})
        start_epoch = resumed.get("epoch", 0)
        started -= resumed.get("elapsed", 0.0)
        cached = time.monotonic()
        cache = _prepare_cache(model, data, prep, spec, on_progress, should_stop, caching) if start_epoch < spec.epochs else None
        dropped = data.settle()  # files found not to be images during the pass leave the splits and the cache
    except BaseException:
        data.close()
        raise
    cache = cache.without(*dropped) if cache is not None else None
    timings = {"loading_s": round(loading_s, 2), "caching_s": round(time.monotonic() - cached, 2)}
    weights = class_weights(data.train.labels, len(data.classes))
    ckpt_path, stopped = workdir / CHECKPOINT_NAME, None
    if cache is not None and (mode == "linear" or cache.train_maps is not None):
        # Every epoch now reads the cache: the training images' pixels go (~60 MB on ants/bees). The validation
        # images' stay (~40 MB): the stored predictions' thumbnails are cut from them at the end, and decoding them
        # again cost 0.8 s of a 9 s second job.
        data.train.images.release()
    for epoch in range(start_epoch, spec.epochs):
        stopped = stop_reason(spec, epoch, history, best["epoch"], time.monotonic() - started)
        if stopped:
            log.info("stopping before epoch %d: %s", epoch + 1, stopped)
            break
        t0 = time.monotonic()
        train_loss, train_acc, val_loss, val_acc, pred, trainable = _epoch(
            model, data, cache, prep, spec, epoch, optimizer, gen, should_stop, weights)
        scheduler.step()
        entry = {
            "epoch": epoch + 1, "train_loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
            "val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5), "seconds": round(time.monotonic() - t0, 2),
            "trainable_stages": trainable, "phase": "head" if trainable == 0 else ("full" if mode == "full" else "finetune"),
        }
        history.append(entry)
        if val_acc > best["val_acc"]:
            best = {"val_acc": val_acc, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict()), "pred": pred.tolist()}
        save_checkpoint(
            ckpt_path, model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            epoch=epoch + 1, config=asdict(spec), classes=data.classes, history=history, best=best, rng=gen.get_state(),
            torch_rng=torch.get_rng_state(), elapsed=time.monotonic() - started,
        )
        mean_s = sum(h["seconds"] for h in history) / len(history)
        log.info("epoch %d/%d (%s): train loss %.4f, accuracy %.3f; validation loss %.4f, accuracy %.3f; %.1f s",
                 epoch + 1, spec.epochs, entry["phase"], train_loss, train_acc, val_loss, val_acc, entry["seconds"])
        on_progress({
            "phase": "training", "epoch": epoch + 1, "epochs": spec.epochs, "history": history,
            "best_val_acc": best["val_acc"], "eta_s": round(mean_s * (spec.epochs - epoch - 1), 1),
        })
    model.load_state_dict(best["state"])

    def fresh() -> tuple[Classifier, torch.optim.Optimizer, Any]:
        torch.manual_seed(spec.seed)
        new = build_model(spec.backbone, len(data.classes), spec.pretrained, resnet18_weights)
        new_optimizer = _optimizer(new, spec)
        return new, new_optimizer, torch.optim.lr_scheduler.LambdaLR(new_optimizer, lr_lambdas(spec))

    outcome = choose_and_refit(model, best, data, cache, spec, fresh, weights, should_stop)
    model = outcome.model
    report = classification_report(data.val.labels, outcome.val_pred, data.classes)
    metrics = {
        "history": history, "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
        "final_val_acc": history[-1]["val_acc"], "train_images": len(data.train), "val_images": len(data.val),
        "mode": mode, "stopped_early": stopped, "seconds": round(time.monotonic() - started, 2), **report,
        "class_weights": None if weights is None else [round(float(w), 4) for w in weights],
        "timings": timings, "caching": dict(caching.stats), **outcome.metrics, "backbone_choice": backbone_choice,
    }
    # Calibration and precision curves out of sample: a refit linear head's out-of-fold logits over every image at its
    # own C, else the selected model's validation logits before the refit; the OOD scorer
    # from the final model's features (the cached ones unless its trunk was fine-tuned); the audit (trust.py).
    trust_meta, trust_tensors, trust_metrics = fit_trust(
        model, data.train, data.val, data.classes, cache, not outcome.trunk_changed, prep, spec.batch_size * 2,
        spec.seed, outcome.holdout, best["epoch"] <= spec.frozen_phase() or outcome.holdout_epoch == 0,
        outcome.calibration_set)
    metrics.update(trust_metrics)
    meta = {
        "backbone": spec.backbone, "classes": data.classes, "image_size": spec.image_size,
        "preprocessing": prep.to_dict(), "metrics": metrics, "params": asdict(spec), **trust_meta,
    }
    path = save_model_artifact(model_dir, model, meta, trust_tensors)
    predictions = keep_bounded(val_predictions(outcome.holdout, data.val, cache, prep, spec, data.classes,
                                               outcome.holdout_epoch, outcome.val_pred))
    write_array_thumbnails(data.val.images, [r["index"] for r in predictions], model_dir / THUMBS_DIR)
    return TrainResult(model_path=path, classes=data.classes, metrics=metrics, skipped_files=data.skipped,
                       predictions=predictions, val_images=len(data.val), backbone=spec.backbone,
                       image_size=spec.image_size)
