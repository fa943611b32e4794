"""A worker's bounded on-disk cache of arrays, keyed by file content: decoded images and frozen-trunk outputs.

A second job on the same images (a new budget, a new mode, a class added) finds what an earlier job computed,
as long as the bytes of the file are the same: keys hold a digest of the file's content, never its path. The
cache is a `diskcache.Cache` (SQLite index plus files) with a size limit and least-recently-used eviction, safe to
share between the processes of one worker. Values are stored as raw `.npy` bytes (never pickled) and read back
with allow_pickle=False: a cache file cannot run code. No Flask, Celery or SQLAlchemy here.
"""
from __future__ import annotations

import hashlib
import io
import logging
import threading
from pathlib import Path
from typing import Any

import diskcache
import numpy as np

from graft.worker.core.images import check_header, decode_bytes

log = logging.getLogger(__name__)

IMAGE_FORMAT = "img1"  # bump when decoding changes, so that old entries are never read again


class _ArraysOnly(diskcache.Disk):
    """diskcache's storage, refusing pickled values: only bytes go in, so only bytes may come out."""

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:  # noqa: ANN401 - diskcache's
        if mode == diskcache.core.MODE_PICKLE:
            raise ValueError("refusing a pickled value in the array cache")
        return super().fetch(mode, filename, value, read)


def content_digest(data: np.ndarray | bytes) -> str:
    """A file's identity in cache keys: blake2b-128 of its bytes (hashlib releases the GIL, so threads hash in parallel)."""
    return hashlib.blake2b(memoryview(data), digest_size=16).hexdigest()


def to_bytes(array: np.ndarray) -> bytes:
    """array as .npy bytes (no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def from_bytes(raw: bytes) -> np.ndarray:
    """Inverse of to_bytes; refuses object arrays."""
    return np.load(io.BytesIO(raw), allow_pickle=False)


class CacheStore:
    """Arrays on disk under directory, at most size_mb in all; the least recently used go first past that.

    Counters (hits, misses, writes) are this instance's, for tests and logs. A failing disk never fails a job:
    a read error is a miss and a write error is logged and dropped.
    """

    def __init__(self, directory: str | Path, size_mb: int) -> None:
        self.directory, self.size_bytes = Path(directory), max(0, size_mb) * 2**20
        self.directory.mkdir(parents=True, exist_ok=True)
        # Each write evicts up to 10 entries past the limit, so the cache never grows far beyond it; evict() finishes.
        self._cache = diskcache.Cache(str(self.directory), disk=_ArraysOnly, size_limit=self.size_bytes,
                                      eviction_policy="least-recently-used")
        self.hits = self.misses = self.writes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        """The array stored under key (marked as just used), or None."""
        try:
            raw = self._cache.get(key, retry=True)
            value = None if raw is None else from_bytes(raw)
        except Exception as exc:  # noqa: BLE001 - a damaged entry is a miss, and is removed
            log.warning("array cache: unreadable entry %s dropped (%s)", key, exc)
            value = None
            try:
                self._cache.delete(key, retry=True)
            except Exception:  # noqa: BLE001, S110 - an index that cannot even delete: every read is a miss anyway
                pass
        with self._lock:
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
        return value

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def put(self, key: str, array: np.ndarray) -> None:
        """Store array under key (replacing any value); evict least recently used entries past the size limit."""
        try:
            self._cache.set(key, to_bytes(array), retry=True)
        except Exception as exc:  # noqa: BLE001 - a full disk (OSError, or SQLite's own error) costs speed only
            log.warning("array cache: cannot write %s (%s); continuing without it", key, exc)
            return
        with self._lock:
            self.writes += 1

    def evict(self) -> int:
        """Remove least recently used entries until the cache fits its size limit; the number removed."""
        try:
            return self._cache.cull(retry=True)
        except Exception as exc:  # noqa: BLE001 - eviction is retried by the next write or pass
            log.warning("array cache: eviction failed (%s)", exc)
            return 0

    def volume(self) -> int:
        """Bytes the cache takes on disk (index and files)."""
        return self._cache.volume()

    def close(self) -> None:
        """Close the index (evicting first)."""
        self.evict()
        self._cache.close()


def image_key(digest: str, short_side: int) -> str:
    """The store key of a file's decoded image at short_side."""
    return f"{IMAGE_FORMAT}:{digest}:{short_side}"


def stored_image(data: np.ndarray, digest: str, short_side: int, max_pixels: int | None,
                 store: CacheStore | None) -> np.ndarray | None:
    """The decoded image of these bytes from the store, or None; the pixel limit is checked on the header of a hit."""
    img = None if store is None else store.get(image_key(digest, short_side))
    if img is not None:
        check_header(data, max_pixels)  # a lowered limit still refuses an image decoded under a higher one
    return img


def decode_and_store(data: np.ndarray, digest: str, short_side: int, max_pixels: int | None,
                     store: CacheStore | None) -> np.ndarray:
    """Decode a file's bytes (images.decode_bytes) and put the image in the store under its content."""
    img = decode_bytes(data, short_side, max_pixels)
    if store is not None:
        store.put(image_key(digest, short_side), img)
    return img

