"""Checkpoints and model artifacts: round trips, atomic writes, and weights_only loading."""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from graft.worker.core.backbones import LITE_MEAN, LITE_STD, build_model
from graft.worker.core.checkpoint import (
    ARTIFACT_FORMAT, META_NAME, MODEL_NAME, load_checkpoint, load_model_artifact, save_checkpoint, save_model_artifact,
)
from graft.worker.core.transforms import Preprocessing


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _assert_same(a: Any, b: Any) -> None:
    """Deep equality for nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def _training_state() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """A tiny model, AdamW with two groups and a LambdaLR, after two real steps (so the states are not empty)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    optimizer = torch.optim.AdamW([{"params": model[0].parameters()}, {"params": model[2].parameters()}], lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda e: 0.5**e, lambda e: 1.0])
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(torch.randn(5, 4)), torch.tensor([0, 1, 2, 0, 1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model, optimizer, scheduler = _training_state()
    gen = torch.Generator().manual_seed(3)
    path = tmp_path / "job" / "checkpoint.pt"
    extra = {"epoch": 2, "config": {"lr": 0.01, "backbone": "resnet18"}, "classes": ["a", "b", "c"],
             "history": [{"epoch": 1, "val_acc": 0.5}], "best": {"val_acc": 0.5, "pred": [0, 1]}, "rng": gen.get_state()}
    save_checkpoint(path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), **extra)
    save_checkpoint(path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), **extra)  # overwriting is atomic too
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # no temp files left

    state = load_checkpoint(path)
    _assert_same(state["model"], model.state_dict())
    _assert_same(state["optimizer"], optimizer.state_dict())
    _assert_same(state["scheduler"], scheduler.state_dict())
    for key, value in extra.items():
        _assert_same(state[key], value)

    fresh_model, fresh_opt, fresh_sched = _training_state()
    fresh_model[0].weight.data.zero_()
    fresh_model.load_state_dict(state["model"])
    fresh_opt.load_state_dict(state["optimizer"])
    fresh_sched.load_state_dict(state["scheduler"])
    _assert_same(fresh_model.state_dict(), model.state_dict())
    _assert_same(fresh_opt.state_dict(), optimizer.state_dict())
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr() and fresh_sched.last_epoch == 2
    resumed = torch.Generator().set_state(state["rng"])
    assert torch.equal(torch.rand(3, generator=resumed), torch.rand(3, generator=gen))


@pytest.mark.parametrize("missing", ["model", "optimizer", "scheduler", "epoch", "config", "classes"])
def test_checkpoint_missing_keys(tmp_path: Path, missing: str) -> None:
    state = {"model": {}, "optimizer": {}, "scheduler": {}, "epoch": 1, "config": {}, "classes": []}
    del state[missing]
    with pytest.raises(ValueError, match=missing):
        save_checkpoint(tmp_path / "checkpoint.pt", **state)
    assert not list(tmp_path.iterdir())


def test_model_artifact_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 3, pretrained=False).eval()
    prep = Preprocessing.for_size(64, LITE_MEAN, LITE_STD)
    meta = {"backbone": "efficientnet_lite0", "classes": ["ant", "bee", "wasp"], "image_size": 64,
            "preprocessing": prep.to_dict(), "metrics": {"val_acc": 0.9}, "params": {"epochs": 2}}
    folder = tmp_path / "models" / "m1"
    path = save_model_artifact(folder, model, meta)
    assert path == folder / MODEL_NAME
    assert sorted(p.name for p in folder.iterdir()) == [META_NAME, MODEL_NAME]  # no temp files left
    assert json.loads((folder / META_NAME).read_text()) == meta

    loaded, loaded_meta = load_model_artifact(path)
    assert not loaded.training
    assert loaded_meta["preprocessing"] == prep
    assert {k: v for k, v in loaded_meta.items() if k != "preprocessing"} == {
        k: v for k, v in meta.items() if k != "preprocessing"}
    _assert_same(loaded.state_dict(), model.state_dict())
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert got.shape == (2, 3) and torch.equal(got, expected)


def test_artifact_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"format": "other/1", "state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a Graft model artifact"):
        load_model_artifact(path)
    assert ARTIFACT_FORMAT == "graft-model/1"


class Payload:
    """An arbitrary class: unpickling it would run code of the file's choosing."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (print, ("pwned",))


@pytest.mark.parametrize("loader", [load_checkpoint, load_model_artifact])
def test_pickled_objects_are_refused(tmp_path: Path, loader: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": ARTIFACT_FORMAT, "model": Payload(), "state_dict": {}}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        loader(path)
    assert "pwned" not in capsys.readouterr().out
