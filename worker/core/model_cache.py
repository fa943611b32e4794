"""A small per-process LRU cache of loaded Predictors, so a worker loads each model once."""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from graft.worker.core.images import DEFAULT_MAX_PIXELS
from graft.worker.core.predict import Predictor
from graft.worker.core.runtimes import DEFAULT_RUNTIME, TORCH

log = logging.getLogger(__name__)

DEFAULT_SIZE = 2


class ModelCache:
    """Keeps the most recently used Predictors, keyed by artifact path, its size and mtime, precision and runtime.

    Converting a model for a runtime (OpenVINO convert and compile) happens here, once per process and model.
    """

    def __init__(self, size: int = DEFAULT_SIZE, loader: Callable[..., Predictor] = Predictor.from_artifact) -> None:
        self.size, self.loader = max(1, size), loader
        self._items: OrderedDict[tuple[str, int, int, str, str, int | None], Predictor] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, path: str | Path, precision: str = "fp32", runtime: str | None = None,
            max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Predictor:
        """The Predictor for the artifact at path, loaded on first use (a rewritten file is reloaded)."""
        path = Path(path)
        runtime = TORCH if precision == "bf16" else runtime or DEFAULT_RUNTIME  # bf16 runs on torch only
        stat = path.stat()  # FileNotFoundError for a missing artifact: the caller decides what that means
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, precision, runtime, max_pixels)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            predictor = self.loader(path, precision=precision, runtime=runtime, max_pixels=max_pixels)
            self.loads += 1
            self._items[key] = predictor
            while len(self._items) > self.size:
                evicted, _ = self._items.popitem(last=False)
                log.info("model cache: evicted %s", evicted[0])
            log.info("model cache: loaded %s on %s (%d cached)", path, predictor.runtime, len(self._items))
            return predictor

    def clear(self) -> None:
        """Forget every cached model."""
        with self._lock:
            self._items.clear()


_default: ModelCache | None = None


def default_cache() -> ModelCache:
    """This process's cache (created on first use)."""
    global _default
    if _default is None:
        _default = ModelCache()
    return _default
