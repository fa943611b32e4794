"""Find a dataset's classes and files, split it, and decode every image once into a bounded memory cache."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from graft.shared.files import display_name, is_junk_name
from graft.worker.core.cache_store import CacheStore
from graft.worker.core.decoding import BackgroundDecoder, ImageStore

log = logging.getLogger(__name__)

class DatasetError(ValueError):
    """The dataset cannot be trained on (too few classes, an empty class, no such folder)."""


DEFAULT_CACHE_MB = 1024


@dataclass
class Split:
    """Decoded images of one split, with integer labels."""

    images: ImageStore = field(default_factory=ImageStore)
    labels: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)  # content digests (cache_store.content_digest), for cache keys

    def __len__(self) -> int:
        return len(self.labels)

    def keep_only(self, indices: Sequence[int]) -> None:
        """Keep these entries (in this order) and drop the others."""
        self.images.keep_only(indices)
        self.labels = [self.labels[i] for i in indices]
        self.paths = [self.paths[i] for i in indices]
        self.digests = [self.digests[i] for i in indices]


Order = list[tuple[str, "str | None"]]  # a split's files in order: (relative path, why skipped when read, or None)


@dataclass
class _Pending:
    """What a streamed load has still to settle: the decoder, each split's file order, the files outside the roots."""

    decoder: BackgroundDecoder
    orders: tuple[Order, Order]
    outside: list[dict[str, str]]
    checked: bool = False


@dataclass
class TrainingData:
    """Decoded training data: class names, train and val splits, and files skipped as unreadable.

    Loaded with stream=True, images may still be decoding: the splits then hold every file that could be read,
    and settle() drops those that turn out not to be images (and lists them in skipped). Not to be confused with
    a dataset's database record (graft.shared.models.DatasetRecord).
    """

    classes: list[str]
    train: Split
    val: Split
    skipped: list[dict[str, str]]
    _pending: _Pending | None = field(default=None, repr=False, compare=False)

    def check(self) -> None:
        """Raise DatasetError once every image is decoded and too few are readable (cheap while still decoding)."""
        pending = self._pending
        if pending is None or pending.checked or not pending.decoder.done():
            return
        pending.checked = True
        bad_train, bad_val = self.train.images.settle(), self.val.images.settle()
        _check(self.classes, [y for i, y in enumerate(self.train.labels) if i not in bad_train],
               len(self.val) - len(bad_val))

    def settle(self, tick: Callable[[], None] = lambda: None) -> tuple[list[int], list[int]]:
        """Wait for the images still decoding and drop the unreadable ones, listed in skipped in file order.

        tick() is called after each file, in order, and may raise to stop. Returns the indices dropped from train
        and from val (as they were before); DatasetError when too few are left.
        """
        pending = self._pending
        if pending is None:
            return [], []
        skipped, bad = list(pending.outside), ([], [])
        try:
            for split, order, failed in zip((self.train, self.val), pending.orders, bad):
                index = 0
                for relative, reason in order:
                    if reason is None:
                        reason, index = split.images.settle_one(index), index + 1
                        if reason is not None:
                            failed.append(index - 1)
                    if reason is not None:
                        skipped.append({"path": relative, "reason": reason})
                    tick()
        finally:
            pending.decoder.close()
        self._pending, self.skipped = None, skipped
        for split, failed in zip((self.train, self.val), bad):
            split.images.settle()  # every image is resolved by now: this only counts the bytes kept
            if failed:
                split.keep_only([i for i in range(len(split)) if i not in set(failed)])
        _check(self.classes, self.train.labels, len(self.val))
        log.info("dataset: %d classes, %d train, %d val, %d skipped", len(self.classes), len(self.train),
                 len(self.val), len(self.skipped))
        return bad

    def close(self) -> None:
        """Stop decoding (the job failed or was cancelled before settle)."""
        if self._pending is not None:
            self._pending.decoder.close()


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


def _scan_split(
    files: dict[str, list[Path]], classes: list[str], root: Path, decoder: BackgroundDecoder,
    tick: Callable[[], None],
) -> tuple[Split, Order]:
    """A split of every file that can be read, its images decoding in the background; and its files' order."""
    split = Split(images=ImageStore(decoder.short_side, decoder.max_pixels))
    jobs = [(label, path) for label, name in enumerate(classes) for path in files.get(name, [])]
    order: Order = []
    for (label, path), got in zip(jobs, decoder.scan([p for _, p in jobs], tick)):
        relative = display_name(str(path.relative_to(root)))  # reported in a job's metrics: text, not bytes
        order.append((relative, got if isinstance(got, str) else None))
        if isinstance(got, str):
            continue
        split.images.append_pending(got[1], path)
        split.labels.append(label)
        split.paths.append(relative)
        split.digests.append(got[0])
    return split, order


def _check(classes: list[str], train_labels: Sequence[int], n_val: int) -> None:
    """DatasetError when a class has no training image or there is no validation image."""
    counts = np.bincount(train_labels, minlength=len(classes)) if len(train_labels) else np.zeros(len(classes), int)
    empty = [name for name, n in zip(classes, counts) if n == 0]
    if empty:
        raise DatasetError(f"class(es) with no readable training image: {', '.join(empty)}")
    if n_val == 0:
        raise DatasetError("no validation images: add a val/ folder or use a val_split above 0 with 2+ images a class")


def load_dataset(
    data_dir: str | Path, val_split: float, seed: int, short_side: int,
    max_pixels: int | None = None, on_file: Callable[[int, int], None] | None = None,
    cache_mb: int = DEFAULT_CACHE_MB, roots: Sequence[Path] | None = None, store: CacheStore | None = None,
    stream: bool = False,
) -> TrainingData:
    """Scan, split and decode a dataset; unreadable files, and with roots those outside them, are skipped and listed.

    With store, decoded images are looked up by content there first (and put there when decoded). With stream,
    it returns once every file is read and hashed, its images still decoding: the caller reads them as they come
    and must call settle() (then close() on failure) before relying on the splits' contents or skipped.
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

    skipped = [{"path": path, "reason": OUTSIDE_ROOTS} for path in outside]
    decoder = BackgroundDecoder(short_side, max_pixels, store, cache_mb * 2**20)
    scan_tick = tick if stream else lambda: None  # not streamed: progress (and a cancel) as each image is decoded
    try:
        train, train_order = _scan_split(train_files, classes, root, decoder, scan_tick)
        val, val_order = _scan_split(val_files, classes, root, decoder, scan_tick)
        data = TrainingData(classes, train, val, skipped + [{"path": p, "reason": r} for p, r in train_order + val_order
                                                            if r is not None],
                            _Pending(decoder, (train_order, val_order), skipped))
        if not stream:
            data.settle(tick)
        else:
            _check(classes, train.labels, len(val))  # the files that cannot even be read are known already
    except BaseException:
        decoder.close()
        raise
    log.info("dataset %s: %d classes, %d train, %d val files read", root, len(classes), len(train), len(val))
    return data
