"""The caching pass as a pipeline: crops are made, the trunk runs and the cache is written at the same time.

A thread makes the uint8 crops of the next batches (waiting for an image still decoding in the background, or
decoding again one past the memory budget, then the plain centre crop or a seeded augmentation), the calling thread runs the trunk (OpenVINO releases the GIL while it
computes), and another thread writes the new views to the on-disk store. Views found in the store are not
computed at all. Each augmented view draws from its own generator, seeded by the job's seed, the file's content
and the view's number: the same file gets the same views in any job, whatever else the dataset holds, which is
what lets a later job (a class added, a new budget) reuse them.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from graft.worker.core.cache_store import CacheStore
from graft.worker.core.runtimes import DEFAULT_RUNTIME
from graft.worker.core.dataset import Split
from graft.worker.core.images import ImageError
from graft.worker.core.transforms import Preprocessing, augment, center_crop  # center_crop: eval_batch's pixels
from graft.worker.core.trunk import TrunkRunner

log = logging.getLogger(__name__)

FEATURE_FORMAT = "feat2"  # bump when a view's crop or augmentation changes (feat2: view 1 is the mirror image)
LOOKAHEAD = 2  # batches of crops made ahead of the trunk
# Batches of 8 through the OpenVINO Lite0 trunk ran at 94 images/s against 78 for 16 and 73 for 32 (2 cores, load
# 2.4, 2026-11-29), and hold a quarter of batch 32's activations: the pass uses at most this, whatever the job's.
TRUNK_BATCH = 8
Item = tuple[Split, int, int]  # (split, image index, view); view 0 is the plain centre crop, view 1 its mirror


@dataclass
class PassOutput:
    """Trunk outputs in item order: pooled (N, D), and maps (N, H, W, C) when kept."""

    pooled: np.ndarray
    maps: np.ndarray | None


@dataclass
class Caching:
    """Where and how the caching pass runs: the worker's on-disk cache (None: none) and the trunk's runtime."""

    store: CacheStore | None = None
    ir_dir: Path | None = None  # converted OpenVINO trunks are kept here
    runtime: str = DEFAULT_RUNTIME
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def on_disk(cls, cache_dir: Path | None, cache_mb: int, runtime: str = DEFAULT_RUNTIME) -> "Caching":
        """The worker's cache under cache_dir, bounded to cache_mb (0 or no folder: nothing kept on disk)."""
        if cache_dir is None or cache_mb <= 0:
            return cls(runtime=runtime)
        try:
            return cls(CacheStore(Path(cache_dir) / "arrays", cache_mb), Path(cache_dir) / "openvino", runtime)
        except Exception as exc:  # noqa: BLE001 - an unusable cache folder costs speed, never the job
            log.warning("worker cache %s unusable, training without it: %s", cache_dir, exc)
            return cls(runtime=runtime)


def view_seed(seed: int, digest: str, view: int) -> int:
    """The generator seed of one augmented view of one file's content."""
    raw = hashlib.blake2b(f"{seed}:{digest}:{view}".encode(), digest_size=8).digest()
    return int.from_bytes(raw, "little") & (2**63 - 1)


def make_crop(split: Split, index: int, view: int, prep: Preprocessing, seed: int) -> np.ndarray:
    """uint8 (crop, crop, 3): the plain centre crop (view 0), its mirror image (view 1, deterministic) or seeded
    augmented view `view` >= 2 of split's image index."""
    img = split.images[index]
    if view <= 1:
        crop = center_crop(img, prep.crop)
        return np.ascontiguousarray(crop[:, ::-1] if view == 1 else crop)
    digest = split.digests[index] if index < len(split.digests) else str(index)
    gen = torch.Generator().manual_seed(view_seed(seed, digest, view))
    return augment(img, prep, gen).permute(1, 2, 0).contiguous().numpy()


def _crops(items: Sequence[Item], batch: Sequence[int], prep: Preprocessing, seed: int) -> tuple[np.ndarray, list[bool]]:
    """The batch's crops, and which are real: an image that turns out not to decode gets a zero crop (its rows are
    computed but never stored; the caller drops them once the dataset is settled)."""
    crops, ok = [], []
    for n in batch:
        try:
            crops.append(make_crop(*items[n], prep, seed))
            ok.append(True)
        except ImageError:
            crops.append(np.zeros((prep.crop, prep.crop, 3), np.uint8))
            ok.append(False)
    return np.stack(crops), ok


def trunk_pass(
    make_trunk: Callable[[], TrunkRunner], shapes: tuple[tuple[int, int, int], int], prep: Preprocessing,
    items: Sequence[Item], keep_maps: bool, batch_size: int, seed: int, tick: Callable[[int], None],
    store: CacheStore | None = None, keys: Sequence[str] | None = None, stats: dict[str, Any] | None = None,
) -> PassOutput:
    """Trunk outputs for every item: from store (by keys) where present, computed (and stored) otherwise.

    shapes is (map shape (H, W, C), pooled size). The trunk is built (make_trunk) only when a view is missing.
    tick(n) is called after each batch and may raise to stop the pass (pending work is dropped).
    """
    started = time.monotonic()
    map_shape, dim = shapes
    map_size = int(np.prod(map_shape))
    pooled = np.empty((len(items), dim), np.float32)
    maps = np.empty((len(items), *map_shape), np.float32) if keep_maps else None
    todo: list[int] = []
    use_store = store is not None and keys is not None
    for n in range(len(items)):
        hit = store.get(keys[n]) if use_store else None  # type: ignore[union-attr,index]
        if hit is None or hit.shape != (map_size + dim,):
            todo.append(n)
            continue
        pooled[n] = hit[map_size:]
        if maps is not None:
            maps[n] = hit[:map_size].reshape(map_shape)
    if len(items) > len(todo):
        tick(len(items) - len(todo))
    batch_size = min(batch_size, TRUNK_BATCH)
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    trunk = make_trunk() if batches else None
    crop_pool = ThreadPoolExecutor(1, thread_name_prefix="crops")
    write_pool = ThreadPoolExecutor(1, thread_name_prefix="cache-write")
    try:
        ahead: deque[Future] = deque(crop_pool.submit(_crops, items, b, prep, seed) for b in batches[:LOOKAHEAD])
        for index, batch in enumerate(batches):
            x, ok = ahead.popleft().result()
            if index + LOOKAHEAD < len(batches):
                ahead.append(crop_pool.submit(_crops, items, batches[index + LOOKAHEAD], prep, seed))
            m, p = trunk(x)  # type: ignore[misc]
            pooled[batch] = p
            if maps is not None:
                maps[batch] = m
            if use_store:
                write_pool.submit(_write, store, [keys[n] for n in batch], m, p, ok)  # type: ignore[index]
            tick(len(batch))
    except BaseException:
        write_pool.shutdown(cancel_futures=True)  # a cancel drops the writes not started; those made are whole
        raise
    finally:
        crop_pool.shutdown(cancel_futures=True)
        write_pool.shutdown(wait=True)
    if use_store:
        store.evict()  # type: ignore[union-attr]
    if stats is not None:
        stats.update(runtime=trunk.name if trunk else None, views_computed=len(todo), views_reused=len(items) - len(todo),
                     seconds=round(time.monotonic() - started, 2))
    log.info("trunk pass (%s): %d views computed, %d reused, %.1f s", trunk.name if trunk else "-", len(todo), len(items) - len(todo),
             time.monotonic() - started)
    return PassOutput(pooled, maps)


def _write(store: CacheStore, keys: Sequence[str], maps: np.ndarray, pooled: np.ndarray, ok: Sequence[bool]) -> None:
    for key, m, p, real in zip(keys, maps, pooled, ok):
        if real:
            store.put(key, np.concatenate([m.ravel(), p]))
