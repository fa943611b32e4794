"""Find a dataset's classes and files, split it, and decode every image once into memory."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from worker.core.images import ImageError, decode_image

log = logging.getLogger(__name__)

JUNK_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})


class DatasetError(ValueError):
    """The dataset cannot be trained on (too few classes, an empty class, no such folder)."""


@dataclass
class Split:
    """Decoded images of one split, with integer labels."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    """A training dataset: class names, train and val splits, and files skipped as unreadable."""

    classes: list[str]
    train: Split
    val: Split
    skipped: list[dict[str, str]]


def _is_junk_name(name: str) -> bool:
    # Hidden files and OS litter (.DS_Store, Thumbs.db, __MACOSX/) are not data: ignored silently.
    return name.startswith(".") or name in JUNK_NAMES


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not _is_junk_name(p.name)}


def _files(folder: Path) -> list[Path]:
    """All non-junk files below folder (sorted, so splits are reproducible)."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(_is_junk_name(part) for part in p.relative_to(folder).parts)
    )


def find_files(data_dir: Path) -> tuple[list[str], dict[str, list[Path]], dict[str, list[Path]] | None]:
    """Classes and their files; the second dict is the val split when data_dir has train/ and val/."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"no such directory: {data_dir}")
    top = _class_dirs(data_dir)
    if "train" in top and "val" in top:
        train = {name: _files(p) for name, p in _class_dirs(top["train"]).items()}
        val = {name: _files(p) for name, p in _class_dirs(top["val"]).items()}
        classes = sorted(set(train) | set(val))
        return classes, {c: train.get(c, []) for c in classes}, {c: val.get(c, []) for c in classes}
    files = {name: _files(p) for name, p in top.items()}
    return sorted(files), files, None


def stratified_split(
    files: dict[str, list[Path]], val_split: float, seed: int
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Per class, draw round(n * val_split) files for validation (at least 1 when n >= 2) with seed."""
    rng = random.Random(seed)
    train, val = {}, {}
    for name, paths in files.items():
        paths = list(paths)
        rng.shuffle(paths)
        n_val = round(len(paths) * val_split)
        if val_split > 0 and len(paths) >= 2:
            n_val = min(max(n_val, 1), len(paths) - 1)
        val[name], train[name] = sorted(paths[:n_val]), sorted(paths[n_val:])
    return train, val


def _decode_split(
    files: dict[str, list[Path]], classes: list[str], short_side: int, root: Path,
    skipped: list[dict[str, str]], max_pixels: int | None, tick: Callable[[], None],
) -> Split:
    split = Split()
    for label, name in enumerate(classes):
        for path in files.get(name, []):
            tick()
            try:
                img = decode_image(path, short_side, max_pixels)
            except ImageError as exc:
                skipped.append({"path": str(path.relative_to(root)), "reason": str(exc)})
                continue
            split.images.append(img)
            split.labels.append(label)
            split.paths.append(str(path.relative_to(root)))
    return split


def load_dataset(
    data_dir: str | Path, val_split: float, seed: int, short_side: int,
    max_pixels: int | None = None, on_file: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Scan, split and decode a dataset; unreadable files are skipped and listed, never fatal."""
    root = Path(data_dir)
    classes, train_files, val_files = find_files(root)
    if len(classes) < 2:
        raise DatasetError(f"need at least 2 classes (one subfolder each), found {len(classes)}: {classes}")
    if val_files is None:
        train_files, val_files = stratified_split(train_files, val_split, seed)
    total = sum(map(len, train_files.values())) + sum(map(len, val_files.values()))
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_file:
            on_file(done, total)

    skipped: list[dict[str, str]] = []
    train = _decode_split(train_files, classes, short_side, root, skipped, max_pixels, tick)
    val = _decode_split(val_files, classes, short_side, root, skipped, max_pixels, tick)
    counts = np.bincount(train.labels, minlength=len(classes)) if len(train) else np.zeros(len(classes), int)
    empty = [name for name, n in zip(classes, counts) if n == 0]
    if empty:
        raise DatasetError(f"class(es) with no readable training image: {', '.join(empty)}")
    if len(val) == 0:
        raise DatasetError("no validation images: add a val/ folder or use a val_split above 0 with 2+ images a class")
    log.info("dataset %s: %d classes, %d train, %d val, %d skipped", root, len(classes), len(train), len(val), len(skipped))
    return Dataset(classes=classes, train=train, val=val, skipped=skipped)
