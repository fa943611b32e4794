"""Find a dataset's classes and files, split it, and decode every image once into a bounded memory cache."""
from __future__ import annotations

import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, overload

import numpy as np

from graft.shared.files import display_name, is_junk_name
from graft.worker.core.cache_store import CacheStore, decode_cached
from graft.worker.core.images import ImageError, decode_image

log = logging.getLogger(__name__)

class DatasetError(ValueError):
    """The dataset cannot be trained on (too few classes, an empty class, no such folder)."""


DEFAULT_CACHE_MB = 1024


class ImageStore(Sequence[np.ndarray]):
    """Decoded images kept in memory up to a byte budget; past it, images are decoded again when used."""

    def __init__(self, short_side: int = 0, max_pixels: int | None = None, budget_bytes: int = 2**62) -> None:
        self.short_side, self.max_pixels, self.budget = short_side, max_pixels, budget_bytes
        self._kept: list[np.ndarray | None] = []
        self._paths: list[Path | None] = []
        self.nbytes = 0

    def append(self, img: np.ndarray, path: Path | None = None) -> None:
        """Add a decoded image (kept if it fits the budget, else only its path)."""
        keep = path is None or self.nbytes + img.nbytes <= self.budget
        self._kept.append(img if keep else None)
        self._paths.append(path)
        self.nbytes += img.nbytes if keep else 0

    def __len__(self) -> int:
        return len(self._kept)

    def release(self) -> None:
        """Drop the decoded pixels held in memory (each image is decoded again if used later)."""
        self._kept = [None if path is not None else img for img, path in zip(self._kept, self._paths)]
        self.nbytes = sum(img.nbytes for img in self._kept if img is not None)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index):  # noqa: ANN001, ANN204, E301
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        img = self._kept[index]
        return img if img is not None else decode_image(self._paths[index], self.short_side, self.max_pixels)


@dataclass
class Split:
    """Decoded images of one split, with integer labels."""

    images: ImageStore = field(default_factory=ImageStore)
    labels: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)  # content digests (cache_store.content_digest), for cache keys

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TrainingData:
    """Decoded training data: class names, train and val splits, and files skipped as unreadable.

    Not to be confused with a dataset's database record (graft.shared.models.DatasetRecord).
    """

    classes: list[str]
    train: Split
    val: Split
    skipped: list[dict[str, str]]


OUTSIDE_ROOTS = "outside the data roots (a symlink): not read"


class _Guard:
    """Which paths resolve (symlinks followed) inside the allowed roots; the others are noted, relative to base."""

    def __init__(self, roots: Sequence[Path] | None, base: Path) -> None:
        self.roots = None if roots is None else tuple(Path(r).resolve() for r in roots)
        self.base, self.outside = base, []

    def allows(self, path: Path) -> bool:
        """True when path may be read; a path that leaves the roots is noted instead."""
        if self.roots is None:
            return True
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling link or a loop: nothing to read there either
            real = None
        if real is not None and any(real.is_relative_to(root) for root in self.roots):
            return True
        self.outside.append(display_name(path.relative_to(self.base).as_posix()) + ("/" if path.is_dir() else ""))
        return False


def _class_dirs(folder: Path, guard: _Guard) -> dict[str, Path]:
    # A class is named by its folder's display name: a folder whose name is not UTF-8 still becomes a class, named
    # in text (stored in JSON and the database) that gives its bytes back (shared.files.original_name).
    return {display_name(p.name): p for p in sorted(folder.iterdir())
            if p.is_dir() and not is_junk_name(p.name) and guard.allows(p)}


def _files(folder: Path, guard: _Guard) -> list[Path]:
    """All non-junk files below folder that stay inside the roots (sorted, so splits are reproducible)."""
    found = []
    for p in sorted(folder.rglob("*")):
        if any(is_junk_name(part) for part in p.relative_to(folder).parts):
            continue
        if p.is_symlink() and p.is_dir():  # rglob does not descend into it; say so when it points outside
            guard.allows(p)
        elif p.is_file() and guard.allows(p):
            found.append(p)
    return found


def find_files(data_dir: Path, roots: Sequence[Path] | None = None, outside: list[str] | None = None,
               ) -> tuple[list[str], dict[str, list[Path]], dict[str, list[Path]] | None]:
    """Classes and their files; the second dict is the val split when data_dir has train/ and val/.

    With roots, a file or folder whose real path leaves them is left out and its path appended to outside.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"no such directory: {data_dir}")
    guard = _Guard(roots, data_dir)
    try:
        top = _class_dirs(data_dir, guard)
        if "train" in top and "val" in top:
            train = {name: _files(p, guard) for name, p in _class_dirs(top["train"], guard).items()}
            val = {name: _files(p, guard) for name, p in _class_dirs(top["val"], guard).items()}
            classes = sorted(set(train) | set(val))
            return classes, {c: train.get(c, []) for c in classes}, {c: val.get(c, []) for c in classes}
        files = {name: _files(p, guard) for name, p in top.items()}
        return sorted(files), files, None
    finally:
        if outside is not None:
            outside.extend(guard.outside)


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
    skipped: list[dict[str, str]], max_pixels: int | None, tick: Callable[[], None], budget: int,
    store: CacheStore | None = None,
) -> Split:
    split = Split(images=ImageStore(short_side, max_pixels, budget))
    jobs = [(label, path) for label, name in enumerate(classes) for path in files.get(name, [])]

    def decode(path: Path) -> tuple[np.ndarray, str] | str:
        try:
            return decode_cached(path, short_side, max_pixels, store)
        except ImageError as exc:
            return str(exc)

    # OpenCV releases the GIL while decoding, so threads decode on every core.
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        for (label, path), got in zip(jobs, pool.map(decode, [p for _, p in jobs])):
            tick()
            relative = display_name(str(path.relative_to(root)))  # reported in a job's metrics: text, not bytes
            if isinstance(got, str):
                skipped.append({"path": relative, "reason": got})
                continue
            split.images.append(got[0], path)
            split.labels.append(label)
            split.paths.append(relative)
            split.digests.append(got[1])
    finally:
        pool.shutdown(cancel_futures=True)  # a cancel (raised by tick) must not wait for the whole folder
    return split


def load_dataset(
    data_dir: str | Path, val_split: float, seed: int, short_side: int,
    max_pixels: int | None = None, on_file: Callable[[int, int], None] | None = None,
    cache_mb: int = DEFAULT_CACHE_MB, roots: Sequence[Path] | None = None, store: CacheStore | None = None,
) -> TrainingData:
    """Scan, split and decode a dataset; unreadable files, and with roots those outside them, are skipped and listed.

    With store, decoded images are looked up by content there first (and put there when decoded).
    """
    root = Path(data_dir)
    outside: list[str] = []
    classes, train_files, val_files = find_files(root, roots, outside)
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

    skipped: list[dict[str, str]] = [{"path": path, "reason": OUTSIDE_ROOTS} for path in outside]
    budget = cache_mb * 2**20
    train = _decode_split(train_files, classes, short_side, root, skipped, max_pixels, tick, budget, store)
    val = _decode_split(val_files, classes, short_side, root, skipped, max_pixels, tick, budget - train.images.nbytes,
                        store)
    counts = np.bincount(train.labels, minlength=len(classes)) if len(train) else np.zeros(len(classes), int)
    empty = [name for name, n in zip(classes, counts) if n == 0]
    if empty:
        raise DatasetError(f"class(es) with no readable training image: {', '.join(empty)}")
    if len(val) == 0:
        raise DatasetError("no validation images: add a val/ folder or use a val_split above 0 with 2+ images a class")
    log.info("dataset %s: %d classes, %d train, %d val, %d skipped", root, len(classes), len(train), len(val), len(skipped))
    return TrainingData(classes=classes, train=train, val=val, skipped=skipped)
