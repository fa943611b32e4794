"""A dataset's images decoded in the background, so that the trunk pass starts on the first ones.

`BackgroundDecoder.scan` reads and hashes every file in order (cheap: the content digests are what cache keys
need, and a file that cannot be read at all is known at once), takes the images an earlier job decoded from the
worker cache, and queues the others for decoding on a thread pool (OpenCV and hashlib release the GIL). Each
image is a future, in file order, so that a consumer taking images in order waits only for the one it needs. A
file that turns out not to be an image fails its future with ImageError; the dataset lists it as skipped once
every future is settled (dataset.TrainingData.settle).
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence, overload

import numpy as np

from graft.worker.core.cache_store import CacheStore, content_digest, decode_and_store, stored_image
from graft.worker.core.images import ImageError, decode_image, read_bytes

log = logging.getLogger(__name__)

# File bytes kept from the hash to the decode, so that most files are read once; past this, a file queued for
# decoding is read again (and its digest checked) when its turn comes, so a folder of large photos cannot fill memory.
HELD_BYTES = 64 * 2**20
CHANGED = "file changed while being read"

Scanned = tuple[str, "Future[np.ndarray | None]"]  # (content digest, the image: None when over the memory budget)


def _done(value: np.ndarray | None) -> Future[np.ndarray | None]:
    future: Future[np.ndarray | None] = Future()
    future.set_result(value)
    return future


class ImageStore(Sequence[np.ndarray]):
    """Decoded images kept in memory up to a byte budget; past it, images are decoded again when used.

    An image may still be decoding (a future from decoding.BackgroundDecoder): reading it waits for it, and raises
    ImageError when the file turned out not to be an image. settle() waits for all of them.
    """

    def __init__(self, short_side: int = 0, max_pixels: int | None = None, budget_bytes: int = 2**62) -> None:
        self.short_side, self.max_pixels, self.budget = short_side, max_pixels, budget_bytes
        self._kept: list[np.ndarray | Future | None] = []
        self._paths: list[Path | None] = []
        self.nbytes = 0

    def append(self, img: np.ndarray, path: Path | None = None) -> None:
        """Add a decoded image (kept if it fits the budget, else only its path)."""
        keep = path is None or self.nbytes + img.nbytes <= self.budget
        self._kept.append(img if keep else None)
        self._paths.append(path)
        self.nbytes += img.nbytes if keep else 0

    def append_pending(self, image: Future, path: Path) -> None:
        """Add an image being decoded: the future gives the pixels, or None when they are not kept (over budget)."""
        self._kept.append(image)
        self._paths.append(path)

    def settle(self) -> dict[int, str]:
        """Wait for the images still decoding; {index: reason} of those that could not be decoded."""
        failed = {i: reason for i in range(len(self._kept)) if (reason := self.settle_one(i)) is not None}
        self.nbytes = sum(img.nbytes for img in self._kept if isinstance(img, np.ndarray))
        return failed

    def settle_one(self, index: int) -> str | None:
        """Wait for image index if it is still decoding; why it could not be decoded, or None."""
        img = self._kept[index]
        if isinstance(img, Future):
            try:
                self._kept[index] = img.result()
            except ImageError as exc:  # the future stays: reading it raises again, never decodes the file anew
                return str(exc)
        return None

    def keep_only(self, indices: Sequence[int]) -> None:
        """Keep these images (in this order) and drop the others."""
        self._kept, self._paths = [self._kept[i] for i in indices], [self._paths[i] for i in indices]
        self.nbytes = sum(img.nbytes for img in self._kept if isinstance(img, np.ndarray))

    def __len__(self) -> int:
        return len(self._kept)

    def release(self) -> None:
        """Drop the decoded pixels held in memory (each image is decoded again if used later)."""
        self._kept = [None if path is not None else img for img, path in zip(self._kept, self._paths)]
        self.nbytes = sum(img.nbytes for img in self._kept if isinstance(img, np.ndarray))

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index):  # noqa: ANN001, ANN204, E301
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        img = self._kept[index]
        if isinstance(img, Future):
            img = img.result()
        return img if img is not None else decode_image(self._paths[index], self.short_side, self.max_pixels)


class BackgroundDecoder:
    """Decodes files at short_side on every core, keeping decoded pixels in memory up to budget_bytes in all.

    An image past the budget resolves to None: its reader decodes the file again when it needs the pixels.
    """

    def __init__(self, short_side: int, max_pixels: int | None, store: CacheStore | None, budget_bytes: int,
                 workers: int | None = None) -> None:
        self.short_side, self.max_pixels, self.store = short_side, max_pixels, store
        workers = workers or os.cpu_count() or 1
        # Two pools: reads queued behind decodes would hold the scan (and the pass) back until most files are decoded.
        self._readers = ThreadPoolExecutor(workers, thread_name_prefix="read")
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self._lock = threading.Lock()
        self._left_bytes, self._held, self._queued = budget_bytes, 0, 0

    def scan(self, paths: Sequence[Path], tick: Callable[[], None]) -> list[Scanned | str]:
        """Per path, in order: (digest, future image), or why the file cannot be read; tick() after each file."""
        out: list[Scanned | str] = []
        for path, got in zip(paths, self._readers.map(self._read, paths)):
            tick()
            if isinstance(got, str):
                out.append(got)
                continue
            data, digest, img = got
            if img is not None:
                out.append((digest, _done(self._keep(img))))
                continue
            with self._lock:
                hold = self._held + data.nbytes <= HELD_BYTES
                self._held += data.nbytes if hold else 0
                self._queued += 1
            future = self._pool.submit(self._decode, path, data if hold else None, digest)
            future.add_done_callback(self._settled)
            out.append((digest, future))
        return out

    def done(self) -> bool:
        """True when no image queued so far is still being decoded."""
        with self._lock:
            return self._queued == 0

    def close(self) -> None:
        """Drop the reads and decodes not started (a cancel must not wait for the whole folder); running ones finish."""
        self._readers.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _read(self, path: Path) -> tuple[np.ndarray, str, np.ndarray | None] | str:
        try:
            data = read_bytes(path)
            digest = content_digest(data)
            return data, digest, stored_image(data, digest, self.short_side, self.max_pixels, self.store)
        except ImageError as exc:
            return str(exc)

    def _decode(self, path: Path, data: np.ndarray | None, digest: str) -> np.ndarray | None:
        held = data is not None
        try:
            if data is None:
                data = read_bytes(path)
                if content_digest(data) != digest:  # the cache keys already hold the digest read first
                    raise ImageError(CHANGED)
            img = decode_and_store(data, digest, self.short_side, self.max_pixels, self.store)
        finally:
            if held:
                with self._lock:
                    self._held -= data.nbytes  # type: ignore[union-attr]
        return self._keep(img)

    def _keep(self, img: np.ndarray) -> np.ndarray | None:
        with self._lock:
            if img.nbytes > self._left_bytes:
                return None
            self._left_bytes -= img.nbytes
        return img

    def _settled(self, _: Future) -> None:
        with self._lock:
            self._queued -= 1
