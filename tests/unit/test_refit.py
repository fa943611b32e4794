"""The final model is refit on every labelled image from the cached trunk outputs; the reported accuracy stays out of sample."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from graft.cli.sampledata import make_shapes_dataset
from graft.worker.core.backbones import BACKBONES, build_model
from graft.worker.core.checkpoint import load_model_artifact
from graft.worker.core.dataset import load_dataset
from graft.worker.core.features import build_cache
from graft.worker.core import refit
from graft.worker.core.refit import CV_BELOW, choose_and_refit, epochs_margin
from graft.worker.core.spec import TrainSpec, lr_lambdas
from graft.worker.core.train import fit
from graft.worker.core.transforms import Preprocessing
from tests.helpers import TINY_TRAIN

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_small_data_is_refit_on_every_image_and_estimated_by_cv(shapes: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="graft.worker.core"):
        metrics = fit(shapes, TrainSpec(**TINY_TRAIN, mode="auto", epochs=2, freeze_epochs=1), tmp_path / "j1",
                      tmp_path / "m1").metrics
    # the job's log says which candidate was kept and why, in words
    assert "kept the linear head: too few validation images a class to compare" in caplog.messages, caplog.messages
    assert not any("{" in m for m in caplog.messages), caplog.messages
    assert metrics["train_images"] == 16 and metrics["val_images"] == 4  # 2 a class held out: under CV_BELOW
    assert metrics["refit"] is True and metrics["selected"] == "linear_head"
    assert metrics["estimate"] == "cv" and metrics["estimated_acc"] == metrics["cv_acc"]
    assert metrics["head_C"] in [float(c) for c in metrics["head_cv_acc"]]
    kept = fit(shapes, TrainSpec(**TINY_TRAIN, mode="auto", epochs=2, freeze_epochs=1, refit=False), tmp_path / "j2",
               tmp_path / "m2").metrics
    assert kept["refit"] is False and kept["estimate"] == "holdout" and "cv_acc" not in kept
    refit_model, meta = load_model_artifact(tmp_path / "m1" / "model.pt")
    holdout_model, _ = load_model_artifact(tmp_path / "m2" / "model.pt")
    assert not torch.allclose(refit_model.head.weight, holdout_model.head.weight)  # 20 images, not 16
    assert meta["backbone"] == "efficientnet_lite0" and meta["params"]["image_size"] == 64


def test_calibration_and_stored_predictions_are_out_of_sample_after_the_refit(shapes: Path, tmp_path: Path) -> None:
    """The refit model has seen the validation images: its calibration comes from the refit head's out-of-fold logits
    over every image (its own C), the stored predictions from the holdout model."""
    spec = {**TINY_TRAIN, "mode": "linear", "epochs": 1}
    refit = fit(shapes, TrainSpec(**spec), tmp_path / "j1", tmp_path / "m1")
    kept = fit(shapes, TrainSpec(**spec, refit=False), tmp_path / "j2", tmp_path / "m2")
    assert refit.metrics["refit"] is True and kept.metrics["refit"] is False
    refit_model, refit_meta = load_model_artifact(tmp_path / "m1" / "model.pt")
    kept_model, kept_meta = load_model_artifact(tmp_path / "m2" / "model.pt")
    assert not torch.allclose(refit_model.head.weight, kept_model.head.weight)  # the final models differ
    images = refit.metrics["train_images"] + refit.metrics["val_images"]
    assert refit.metrics["calibration"]["images"] == images and "out-of-fold" in refit.metrics["calibration"]["source"]
    assert kept.metrics["calibration"]["images"] == kept.metrics["val_images"]
    assert "validation" in kept.metrics["calibration"]["source"]
    assert refit_meta["calibration"]["curves"] and kept_meta["calibration"]["curves"]
    assert refit.predictions == kept.predictions and refit.metrics["val_acc"] == kept.metrics["val_acc"]

def test_a_fine_tuned_choice_is_refit_from_the_cache_without_running_the_trunk(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refit, "MARGIN_IMAGES", 0)  # the selection rule has its own test: here the epochs must win
    monkeypatch.setattr(refit, "Z_MARGIN", 0.0)
    data_dir = make_shapes_dataset(tmp_path / "shapes", per_class=2 * CV_BELOW, size=48, classes=("circles", "squares"))
    spec = TrainSpec(**TINY_TRAIN, mode="finetune", epochs=3, freeze_epochs=1, val_split=0.5)
    info = BACKBONES[spec.backbone]
    prep = Preprocessing.for_size(64, info.mean, info.std)
    data = load_dataset(data_dir, spec.val_split, spec.seed, prep.resize)
    selected = build_model(spec.backbone, 2, pretrained=True)
    split_at = len(selected.stages) - info.finetune_stages
    cache = build_cache(selected, data.train, data.val, prep, spec.views, split_at, True, 8, 0, lambda n: None)
    trunk_runs: list[int] = []

    def fresh():  # noqa: ANN202
        model = build_model(spec.backbone, 2, pretrained=True)
        model.stages[0].register_forward_hook(lambda *_: trunk_runs.append(1))
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate)
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(spec)[0])

    best = {"val_acc": 1.0, "epoch": 2, "pred": list(data.val.labels)}  # every validation image right
    outcome = choose_and_refit(selected, best, data, cache, spec, fresh, None, lambda: False)
    assert outcome.metrics["selected"] == "epochs" and outcome.metrics["estimate"] == "holdout"
    assert outcome.metrics["refit"] is True and outcome.metrics["refit_epochs"] == 2
    assert outcome.val_pred == best["pred"] and trunk_runs == []  # every refit epoch ran from the cache
    # a fine-tuned model is calibrated on its validation logits before the refit (no out-of-fold logits)
    assert outcome.trunk_changed is True and outcome.calibration_set is None and outcome.holdout is selected
    pretrained = build_model(spec.backbone, 2, pretrained=True)
    tuned, untouched = outcome.model.stages[-1], outcome.model.stages[0]
    assert not torch.allclose(tuned[0].weight, pretrained.stages[-1][0].weight)  # fine-tuned on train + val
    assert torch.equal(untouched[0].weight, pretrained.stages[0][0].weight)  # frozen stages keep ImageNet's


def test_linear_mode_keeps_the_holdout_estimate_on_a_large_val_split(tmp_path: Path) -> None:
    data_dir = make_shapes_dataset(tmp_path / "shapes", per_class=2 * CV_BELOW, size=48, classes=("circles", "squares"))
    metrics = fit(data_dir, TrainSpec(**TINY_TRAIN, mode="linear", epochs=1, val_split=0.5), tmp_path / "j", tmp_path / "m").metrics
    assert metrics["selected"] == "linear_head" and metrics["estimate"] == "holdout" and metrics["refit"] is True
    assert metrics["estimated_acc"] == metrics["head_val_acc"] == metrics["val_acc"]
    assert np.isclose(metrics["cv_acc"], max(metrics["cv_acc"], 0.0))  # reported beside it, not instead


def test_the_cache_holds_mirror_images_for_the_head(shapes: Path) -> None:
    """View 1 of every training image, and val's extra view, are the plain crops' mirror images (the probe's views)."""
    from graft.worker.core.transforms import eval_batch

    info = BACKBONES["efficientnet_lite0"]
    prep = Preprocessing.for_size(64, info.mean, info.std)
    data = load_dataset(shapes, 0.3, 0, prep.resize)
    model = build_model("efficientnet_lite0", 2, pretrained=True).eval()
    cache = build_cache(model, data.train, data.val, prep, 2, len(model.stages), False, 8, 0, lambda n: None)
    with torch.no_grad():
        mirrored = model.features(eval_batch(data.train.images, prep).flip(3))
        val_mirrored = model.features(eval_batch(data.val.images, prep).flip(3))
    assert torch.allclose(cache.train_pooled[1], mirrored, atol=1e-4)
    assert torch.allclose(cache.val_mirror_pooled, val_mirrored, atol=1e-4)
    assert not torch.allclose(cache.train_pooled[2], cache.train_pooled[1], atol=1e-3)  # view 2 is a random crop


@pytest.mark.parametrize(("wins", "losses", "kept"), [
    (4, 0, True),  # four more right, nothing against: 2 standard errors of 4 disagreements
    (3, 0, False),  # 3 < 2 * sqrt(3)
    (8, 4, False),  # +4 over 12 disagreements: under 2 standard errors (6.9)
    (12, 2, True),  # +10 over 14: above 7.5
])
def test_fine_tuning_is_kept_only_beyond_noise(wins: int, losses: int, kept: bool) -> None:
    head = np.array([False] * wins + [True] * losses + [True] * 10)
    epochs = np.array([True] * wins + [False] * losses + [True] * 10)
    w, l, needed = epochs_margin(head, epochs)
    assert (w, l) == (wins, losses) and (w - l >= needed) == kept
