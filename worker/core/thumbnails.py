"""Small JPEG thumbnails, written where images are decoded anyway: a dataset's classes, a model's validation images.

The API process never decodes an image; it serves these files. Each is at most THUMB_SIDE px on its longer side.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from graft.shared.thumbs import PER_CLASS_THUMBS, THUMB_SIDE
from graft.worker.core.dataset import find_files

log = logging.getLogger(__name__)


def jpeg_thumbnail(img: Image.Image | np.ndarray, side: int = THUMB_SIDE) -> bytes:
    """img (a Pillow image or an RGB uint8 array) scaled to fit side x side, as JPEG bytes."""
    pil = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    pil = pil.convert("RGB")
    pil.thumbnail((side, side))
    out = io.BytesIO()
    pil.save(out, "JPEG", quality=80)
    return out.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Write through a temp file and a rename (a reader never sees half a file); no fsync: a thumbnail is disposable,
    and an fsync per file cost more than making it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_array_thumbnails(images: Sequence[np.ndarray], indices: Sequence[int], folder: Path) -> None:
    """Write images[i] as folder/<i>.jpg for each i in indices (decoded arrays, e.g. a validation split's)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in indices:
        _write(folder / f"{i}.jpg", jpeg_thumbnail(images[i]))


def _file_thumbnail(path: Path, max_pixels: int | None) -> bytes | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # our own pixel limit applies below
            with Image.open(path) as img:
                if max_pixels and img.size[0] * img.size[1] > max_pixels:
                    return None
                img.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decode at the smallest scale still >= the thumbnail
                return jpeg_thumbnail(img)
    except Exception:  # noqa: BLE001 - an unreadable file gets no thumbnail; the report names it already
        return None


def save_thumbnail(img: np.ndarray, path: Path) -> bool:
    """Write img's thumbnail at path (its folder made); False, logged, when the disk refuses: never fails a job."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, jpeg_thumbnail(img))
        return True
    except OSError as exc:
        log.warning("no thumbnail %s: %s", path.name, exc)
        return False


def write_class_thumbnails(root: Path, folder: Path, max_pixels: int | None, roots: Sequence[Path] | None = None,
                           per_class: int = PER_CLASS_THUMBS) -> dict[str, list[str]]:
    """The first readable images of each class of the dataset at root as folder/<n>.jpg; {class: [names]}."""
    classes, train, val = find_files(root, roots)
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[str]] = {}
    n = 0
    for name in classes:
        made[name] = []
        for path in [*train.get(name, []), *(val or {}).get(name, [])]:
            if len(made[name]) >= per_class:
                break
            data = _file_thumbnail(path, max_pixels)
            if data is not None:
                _write(folder / f"{n}.jpg", data)
                made[name].append(f"{n}.jpg")
                n += 1
    return made
