"""The training core: modes, frozen-trunk caching, early stopping, time budget, resume from checkpoint."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from graft.shared.files import original_name
from graft.worker.core.backbones import BACKBONES, build_model
from graft.worker.core.dataset import load_dataset
from graft.worker.core.features import build_cache, cached_eval
from graft.worker.core.spec import stop_reason
from graft.worker.core.stop import Stopped
from graft.worker.core.train import TrainSpec, fit
from graft.worker.core.transforms import Preprocessing, eval_batch
from tests.helpers import TINY_TRAIN


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fit(data: Path, tmp: Path, **params) -> dict:  # noqa: ANN003
    return fit(data, TrainSpec(**{**TINY_TRAIN, **params}), tmp / "job", tmp / "model").metrics


@pytest.mark.parametrize(
    ("params", "phases", "trainable"),
    [
        ({"mode": "linear", "epochs": 3}, ["head"] * 3, [0, 0, 0]),
        ({"mode": "finetune", "epochs": 3, "freeze_epochs": 1}, ["head", "finetune", "finetune"], [0, 1, 1]),
        ({"mode": "auto", "epochs": 3, "freeze_epochs": 1}, ["head", "finetune", "finetune"], [0, 1, 1]),
        ({"mode": "full", "epochs": 2, "freeze_epochs": 1}, ["head", "full"], [0, 7]),
        ({"mode": "linear", "epochs": 2, "pretrained": False}, ["full", "full"], [7, 7]),
    ],
)
def test_modes_train_the_right_stages(shapes: Path, tmp_path: Path, params: dict, phases: list, trainable: list) -> None:
    metrics = _fit(shapes, tmp_path, **params)
    assert [h["phase"] for h in metrics["history"]] == phases
    assert [h["trainable_stages"] for h in metrics["history"]] == trainable
    assert metrics["best_val_acc"] == max(h["val_acc"] for h in metrics["history"])
    assert metrics["final_val_acc"] == metrics["history"][-1]["val_acc"]
    assert (tmp_path / "model" / "model.pt").is_file()


def test_cache_equals_the_trunk_run_on_the_fly(shapes: Path) -> None:
    info = BACKBONES["efficientnet_lite0"]
    prep = Preprocessing.for_size(64, info.mean, info.std)
    data = load_dataset(shapes, 0.3, 0, prep.resize)
    model = build_model("efficientnet_lite0", 2, pretrained=True).eval()
    split_at = len(model.stages) - info.finetune_stages
    cache = build_cache(model, data.train, data.val, prep, 2, split_at, True, 4, 0, lambda n: None)
    assert cache.views == 3 and cache.train_maps.shape[:2] == (3, len(data.train))
    with torch.no_grad():
        direct = model.features(eval_batch(data.val.images, prep), len(model.stages))
        logits = model(eval_batch(data.val.images, prep))
    assert torch.allclose(cache.val_pooled, direct, atol=1e-4)
    assert torch.allclose(cache.train_pooled[0], model.features(eval_batch(data.train.images, prep)), atol=1e-4)
    labels = torch.tensor(data.val.labels)
    _, acc_maps, pred_maps = cached_eval(model, cache.val_maps, labels, split_at, 4)
    _, acc_pooled, pred_pooled = cached_eval(model, cache.val_pooled, labels, None, 4)
    assert torch.equal(pred_maps, logits.argmax(1)) and torch.equal(pred_pooled, logits.argmax(1))
    assert not torch.allclose(cache.train_pooled[1], cache.train_pooled[0])  # augmented views differ


def test_time_budget_stops_after_the_first_epoch(shapes: Path, tmp_path: Path) -> None:
    metrics = _fit(shapes, tmp_path, mode="auto", epochs=5, time_budget_s=0.001)
    assert len(metrics["history"]) == 1
    assert "time budget" in metrics["stopped_early"]


@pytest.mark.parametrize(
    ("accs", "patience", "stops"),
    [
        ([0.5, 0.6, 0.6, 0.6, 0.6], 3, True),  # best at epoch 2, then three fine-tune epochs without gain
        ([0.5, 0.6, 0.6, 0.6, 0.7], 3, False),
        ([0.5, 0.6, 0.6, 0.6, 0.6], 0, False),  # patience 0: never stop early
        ([0.9, 0.5, 0.5], 3, False),  # too few fine-tune epochs to judge
    ],
)
def test_early_stopping_on_validation(accs: list[float], patience: int, stops: bool) -> None:
    spec = TrainSpec(epochs=10, freeze_epochs=1, patience=patience, mode="finetune")
    history = [{"epoch": i + 1, "val_acc": a, "seconds": 0.0} for i, a in enumerate(accs)]
    best_epoch = max(range(len(accs)), key=lambda i: (accs[i], -i)) + 1
    reason = stop_reason(spec, len(accs), history, best_epoch, elapsed=0.0)
    assert (reason is not None) == stops


def test_resume_continues_from_the_last_checkpoint(shapes: Path, tmp_path: Path) -> None:
    spec = TrainSpec(**{**TINY_TRAIN, "mode": "finetune", "epochs": 3, "freeze_epochs": 1})
    seen: list[dict] = []

    def stop_after_two() -> bool:
        return len(seen) >= 2

    with pytest.raises(Stopped):
        fit(shapes, spec, tmp_path / "job", tmp_path / "model", on_progress=lambda e: seen.append(e)
            if e["phase"] == "training" else None, should_stop=stop_after_two)
    first_two = seen[-1]["history"]
    assert [h["epoch"] for h in first_two] == [1, 2]
    metrics = fit(shapes, spec, tmp_path / "job", tmp_path / "model").metrics
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["history"][:2] == first_two  # not re-run: taken from the checkpoint


def test_decoded_image_cache_is_bounded(shapes: Path) -> None:
    full = load_dataset(shapes, 0.3, 0, 40)
    bounded = load_dataset(shapes, 0.3, 0, 40, cache_mb=0)
    assert full.train.images.nbytes > 0 and bounded.train.images.nbytes == 0
    assert len(bounded.train.images) == len(full.train.images)
    for a, b in zip(full.train.images, bounded.train.images):  # decoded again on use, identical
        assert (a == b).all()
    assert [x.shape for x in bounded.val.images[0:2]] == [x.shape for x in full.val.images[0:2]]


def test_a_class_folder_named_in_bytes_that_are_not_utf8_trains_under_its_escaped_name(shapes: Path,
                                                                                        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    raw = os.fsdecode(b"caf\xe9")  # Latin-1 "café": not UTF-8, so os gives it back surrogate-escaped
    shutil.copytree(shapes / "circles", data / raw)
    shutil.copytree(shapes / "squares", data / "squares")
    result = fit(data, TrainSpec(**{**TINY_TRAIN, "mode": "linear", "epochs": 1}), tmp_path / "job", tmp_path / "model")
    assert result.classes == ["caf%E9", "squares"]
    json.dumps(result.metrics).encode("utf-8")  # stored as JSON text: no surrogate left anywhere
    assert original_name(result.classes[0]) == raw
