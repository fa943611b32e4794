"""Generate a small labelled image set (coloured shapes) for the demo and the tests."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SHAPES = ("circles", "squares", "triangles")


def _draw(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((size, size, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)  # random background colour: the class is the shape, not the colour
    noise = rng.normal(0, 12, img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    r = int(size * rng.uniform(0.18, 0.32))
    cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, 2))
    if shape == "circles":
        cv2.circle(img, (cx, cy), r, colour, -1, cv2.LINE_AA)
    elif shape == "squares":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1, cv2.LINE_AA)
    else:
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
    return img


def make_shapes_dataset(root: str | Path, per_class: int = 40, size: int = 128, seed: int = 0,
                        classes: tuple[str, ...] = SHAPES) -> Path:
    """Write per_class JPEGs for each class into root/<class>/ and return root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        shape = name if name in SHAPES else SHAPES[index % len(SHAPES)]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = _draw(shape, size, rng)
            cv2.imwrite(str(folder / f"{name}_{i:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return root
