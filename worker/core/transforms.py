"""Batch preprocessing on pre-decoded uint8 images: train-time augmentation and the eval transform."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF


@dataclass(frozen=True)
class Preprocessing:
    """The evaluation transform: resize the short side, center-crop, normalise. Stored with every model."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def for_size(cls, image_size: int, mean: Sequence[float], std: Sequence[float]) -> "Preprocessing":
        """The usual 224-from-256 ratio, scaled to image_size."""
        return cls(math.ceil(image_size * 256 / 224), image_size, tuple(mean), tuple(std))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        """Inverse of to_dict."""
        return cls(int(data["resize"]), int(data["crop"]), tuple(data["mean"]), tuple(data["std"]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _normalize(batch: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    x = batch.float().div_(255)
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def _to_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)


def eval_batch(images: Sequence[np.ndarray], prep: Preprocessing) -> torch.Tensor:
    """Center crops of images already resized to prep.resize, normalised, channels-last."""
    crops = [TF.center_crop(_to_chw(img), [prep.crop, prep.crop]) for img in images]
    return _normalize(torch.stack(crops), prep)


def _crop_box(h: int, w: int, scale: tuple[float, float], gen: torch.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (aspect 3/4..4/3), drawn from gen so runs are reproducible."""
    area = h * w
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=gen))
        ratio = math.exp(float(torch.empty(1).uniform_(*log_ratio, generator=gen)))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
            return top, left, ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def augment(img: np.ndarray, prep: Preprocessing, gen: torch.Generator,
            scale: tuple[float, float] = (0.25, 1.0)) -> torch.Tensor:
    """One random resized crop to prep.crop with a random horizontal flip: uint8 (3, crop, crop)."""
    t = _to_chw(img)
    top, left, ch, cw = _crop_box(t.shape[1], t.shape[2], scale, gen)
    t = TF.resized_crop(t, top, left, ch, cw, [prep.crop, prep.crop], antialias=True)
    if bool(torch.rand(1, generator=gen) < 0.5):
        t = TF.horizontal_flip(t)
    return t


def train_batch(
    images: Sequence[np.ndarray], prep: Preprocessing, gen: torch.Generator, scale: tuple[float, float] = (0.25, 1.0)
) -> torch.Tensor:
    """Random resized crop to prep.crop and horizontal flip, normalised, channels-last."""
    return _normalize(torch.stack([augment(img, prep, gen, scale) for img in images]), prep)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The centre size x size of an HWC image: the same pixels as torchvision's center_crop (it pads when smaller)."""
    h, w = img.shape[:2]
    if h < size or w < size:
        chw = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        return TF.center_crop(chw, [size, size]).permute(1, 2, 0).numpy()
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img[top : top + size, left : left + size]
