"""Images unlike any insect, for the "none of the above" measurements: scikit-image's sample photos (whole and
cropped), drawn shapes, noise and patterns. Written as files, so they take the very path predictions take.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SAMPLES = ("astronaut", "brick", "camera", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
           "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
           "microaneurysms", "moon", "page", "retina", "rocket", "text", "stereo_motorcycle", "binary_blobs",
           "shepp_logan_phantom")
"""scikit-image sample images that ship with the package (no download)."""


def _rgb(img: np.ndarray) -> np.ndarray:
    """Any sample (bool, gray, float, RGBA) as uint8 RGB."""
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        img = np.clip(255 * (img - img.min()) / max(float(img.max() - img.min()), 1e-9), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def sample_photos(crops: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each sample image whole, then `crops` random crops of 40–80 % of its sides."""
    import skimage.data

    out = []
    for name in SAMPLES:
        img = getattr(skimage.data, name)()
        img = _rgb(img[0] if isinstance(img, tuple) else img)
        out.append(img)
        h, w = img.shape[:2]
        for _ in range(crops):
            ch, cw = int(h * rng.uniform(0.4, 0.8)), int(w * rng.uniform(0.4, 0.8))
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            out.append(np.ascontiguousarray(img[top : top + ch, left : left + cw]))
    faces = skimage.data.lfw_subset()[:20]  # 25x25 grey faces, enlarged
    out += [cv2.resize(_rgb(face), (200, 200), interpolation=cv2.INTER_LINEAR) for face in faces]
    return out


def shapes(n: int, rng: np.random.Generator, size: int = 256) -> list[np.ndarray]:
    """Filled circles, rectangles and polygons in random colours on a flat background."""
    out = []
    for _ in range(n):
        img = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
        for _ in range(rng.integers(1, 6)):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            kind = rng.integers(0, 3)
            if kind == 0:
                cv2.circle(img, tuple(int(v) for v in rng.integers(0, size, 2)), int(rng.integers(10, size // 2)),
                           colour, -1)
            elif kind == 1:
                a, b = rng.integers(0, size, 2), rng.integers(0, size, 2)
                cv2.rectangle(img, tuple(int(v) for v in a), tuple(int(v) for v in b), colour, -1)
            else:
                cv2.fillPoly(img, [rng.integers(0, size, (int(rng.integers(3, 7)), 2)).astype(np.int32)], colour)
        out.append(img)
    return out


def patterns(n: int, rng: np.random.Generator, size: int = 256) -> list[np.ndarray]:
    """Gaussian and uniform noise, colour gradients, stripes and checkerboards."""
    out = []
    y, x = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        kind = i % 5
        if kind == 0:
            img = np.clip(rng.normal(128, rng.uniform(10, 80), (size, size, 3)), 0, 255)
        elif kind == 1:
            img = rng.integers(0, 256, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1)
        elif kind == 2:
            a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            t = (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1))[..., None]
            t = (t - t.min()) / max(float(t.max() - t.min()), 1e-9)
            img = a * (1 - t) + b * t
        elif kind == 3:
            period = rng.integers(4, 40)
            img = ((np.sin(2 * np.pi * (x * np.cos(i) + y * np.sin(i)) * size / period) > 0)[..., None]
                   * rng.integers(0, 256, 3))
        else:
            cell = int(rng.integers(8, 64))
            img = (((np.arange(size)[:, None] // cell + np.arange(size)[None] // cell) % 2)[..., None]
                   * rng.integers(0, 256, 3))
        out.append(np.asarray(img, np.uint8))
    return out


def write_ood_images(folder: Path, crops: int = 4, n_shapes: int = 60, n_patterns: int = 40,
                     seed: int = 0) -> list[Path]:
    """Write every unfamiliar image into folder as PNG; returns their paths (about 260 with the defaults)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    groups = {"photo": sample_photos(crops, rng), "shape": shapes(n_shapes, rng), "pattern": patterns(n_patterns, rng)}
    paths = []
    for group, images in groups.items():
        for i, img in enumerate(images):
            path = folder / f"{group}-{i:03d}.png"
            cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            paths.append(path)
    return paths
