"""Choosing prediction's batch size by measurement, once per loaded model.

The fastest batch depends on the model, the runtime and the CPU's caches: small batches keep activations in cache,
large ones amortise per-call overhead. So we time the runner on a few sizes with zero images and keep the one with
the most images per second. Ties (within 5 %) go to the smaller batch: less memory, and the decode of the next
batch overlaps sooner. No Flask, Celery or SQLAlchemy here.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

CANDIDATES = (8, 16, 32, 64)
TIE = 0.05


def images_per_second(run: Callable[[np.ndarray], object], batch: np.ndarray, repeats: int = 1) -> float:
    """Best images/s of run over repeats calls on batch, after one warm-up call."""
    run(batch)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(batch)
        best = min(best, time.perf_counter() - t0)
    return len(batch) / max(best, 1e-9)


def choose_batch_size(run: Callable[[np.ndarray], object], crop: int,
                      candidates: Sequence[int] = CANDIDATES) -> tuple[int, dict[int, float]]:
    """The measured fastest batch size for run on uint8 (N, crop, crop, 3) inputs, and every size's images/s."""
    speeds = {n: images_per_second(run, np.zeros((n, crop, crop, 3), np.uint8)) for n in candidates}
    top = max(speeds.values())
    chosen = min(n for n, v in speeds.items() if v >= top * (1 - TIE))
    log.info("batch size %d chosen by measurement (images/s: %s)", chosen,
             ", ".join(f"{n}: {v:.0f}" for n, v in speeds.items()))
    return chosen, speeds
