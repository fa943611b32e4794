"""The pure prediction core: a trained model's eval transform, batched inference, decoding overlapping inference.

No Flask, Celery or SQLAlchemy here. Every input file gives exactly one row; unreadable ones get an error.
Inference runs on a runtime from worker.core.runtimes (OpenVINO fp32 by default, eager PyTorch as the fallback).
"""
from __future__ import annotations

import copy
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from graft.worker.core.backbones import Classifier
from graft.worker.core.checkpoint import load_model_artifact
from graft.shared.files import is_junk_name
from graft.shared.params import PRECISIONS  # bf16 (eager PyTorch only): ~2x faster, top-1 may differ on near-ties
from graft.worker.core.images import DEFAULT_MAX_PIXELS, ImageError, decode_image
from graft.worker.core.runtimes import DEFAULT_RUNTIME, RUNTIMES, TORCH, Normalized, Runner, RuntimeUnavailable, make_runner
from graft.worker.core.transforms import Preprocessing

log = logging.getLogger(__name__)

BATCH_SIZE = 32
UNKNOWN = "unknown"
Row = dict[str, Any]


class Stopped(Exception):
    """should_stop() asked predict_files to stop between batches (the job ended or the chunk was taken over)."""


@dataclass
class Listing:
    """The files of an input folder as (relative posix path, absolute path), and how many were ignored."""

    files: list[tuple[str, Path]]
    ignored: int = 0


def list_input_files(root: Path, recursive: bool = True) -> Listing:
    """Every file below root (symlinks not followed into folders), sorted by relative path.

    Hidden files, OS litter (Thumbs.db, __MACOSX/) and symlinked folders are counted as ignored, not listed;
    without recursive, subfolders are simply not searched.
    """
    root = Path(root)
    files: list[tuple[str, Path]] = []
    ignored = 0
    for folder, dirs, names in os.walk(root, followlinks=False):
        here = Path(folder)
        kept = [d for d in dirs if not is_junk_name(d) and not (here / d).is_symlink()]
        ignored += len(dirs) - len(kept)
        dirs[:] = sorted(kept) if recursive else []
        for name in names:
            if is_junk_name(name):
                ignored += 1
                continue
            path = here / name
            files.append((path.relative_to(root).as_posix(), path))
    files.sort(key=lambda item: item[0])
    return Listing(files, ignored)


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    real = path.resolve()
    return any(real == r or real.is_relative_to(r) for r in roots)


def _decode(path: Path, short_side: int, max_pixels: int | None, roots: Sequence[Path] | None) -> np.ndarray | str:
    """The decoded image, or the reason it cannot be read."""
    try:
        if roots is not None and not _inside(path, roots):
            return "file lies outside the configured data roots (symlink)"
        return decode_image(path, short_side, max_pixels)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad file must never sink the batch
        log.warning("decoding %s failed: %s", path, exc)
        return f"cannot decode: {type(exc).__name__}"


def bf16_native() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def optimize_for_cpu(model: Classifier) -> Classifier:
    """A copy with batch-norm folded into the preceding convolutions, stage by stage (fp32, same results).

    A stage that torch.fx cannot trace is kept as it is.
    """
    from torch.fx.experimental.optimization import fuse

    fused = copy.deepcopy(model).eval()
    for index, stage in enumerate(fused.stages):
        try:
            fused.stages[index] = fuse(stage)
        except Exception as exc:  # noqa: BLE001 - tracing limits only cost speed, never correctness
            log.info("stage %d not fused (%s): kept as is", index, type(exc).__name__)
    return fused.to(memory_format=torch.channels_last)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The centre size x size of an HWC image: the same pixels as torchvision's center_crop (it pads when smaller)."""
    h, w = img.shape[:2]
    if h < size or w < size:
        chw = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        return TF.center_crop(chw, [size, size]).permute(1, 2, 0).numpy()
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img[top : top + size, left : left + size]


def crop_batch(images: Sequence[np.ndarray], prep: Preprocessing) -> np.ndarray:
    """Centre crops of images already resized to prep.resize, as one uint8 (N, crop, crop, 3) array."""
    return np.stack([center_crop(img, prep.crop) for img in images])


class Predictor:
    """A loaded model with its classes and eval transform, ready to classify files or decoded images."""

    def __init__(self, runner: Runner, classes: Sequence[str], prep: Preprocessing,
                 batch_size: int = BATCH_SIZE, decode_threads: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.runner, self.classes, self.prep = runner, list(classes), prep
        self.batch_size = max(1, batch_size)
        self.decode_threads = decode_threads or max(1, min(4, os.cpu_count() or 1))
        self.max_pixels = max_pixels

    @property
    def runtime(self) -> str:
        """The runtime actually in use (a requested one that is unavailable here falls back to torch)."""
        return self.runner.name

    @classmethod
    def from_artifact(cls, path: str | Path, optimize: bool = True, precision: str = "fp32",
                      runtime: str | None = None, **kwargs: Any) -> "Predictor":
        """Load model.pt (weights_only) and build a Predictor with the artifact's classes and preprocessing.

        runtime (default DEFAULT_RUNTIME) applies to fp32; bf16 always runs on eager PyTorch. A runtime that is not
        installed or cannot convert the model falls back to PyTorch fp32, with a warning in the log.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        runtime = runtime or DEFAULT_RUNTIME
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        model, meta = load_model_artifact(Path(path))
        prep: Preprocessing = meta["preprocessing"]
        model = model.to(memory_format=torch.channels_last).eval()
        runner: Runner | None = None
        if precision == "fp32" and runtime != TORCH:
            try:
                runner = make_runner(runtime, Normalized(model, prep.mean, prep.std), prep.crop)
            except RuntimeUnavailable as exc:
                log.warning("runtime %s unavailable for %s, using torch fp32: %s", runtime, path, exc)
        if runner is None:
            runner = cls._torch_runner(model, prep, precision, optimize)
        return cls(runner, meta["classes"], prep, **kwargs)

    @staticmethod
    def _torch_runner(model: Classifier, prep: Preprocessing, precision: str, optimize: bool) -> Runner:
        if optimize:
            model = optimize_for_cpu(model)
        dtype = torch.float32
        if precision == "bf16":
            if bf16_native():
                dtype = torch.bfloat16
                model = model.to(dtype)
            else:
                log.info("bf16 asked for but this CPU has no native bf16: running fp32")
        return make_runner(TORCH, Normalized(model, prep.mean, prep.std, dtype), prep.crop)

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Float32 logits for images already decoded to the model's resize size."""
        return self.runner(crop_batch(images, self.prep))

    def probabilities(self, images: Sequence[np.ndarray], tta: bool = False) -> torch.Tensor:
        """Softmax class probabilities for images already decoded to the model's resize size.

        With tta, the mean of each crop's and its mirror image's probabilities (one batch, twice the images).
        """
        crops = crop_batch(images, self.prep)
        if not tta:
            return torch.softmax(torch.from_numpy(self.runner(crops)).float(), dim=1)
        both = torch.softmax(torch.from_numpy(self.runner(np.concatenate([crops, crops[:, :, ::-1]]))).float(), dim=1)
        return (both[: len(crops)] + both[len(crops) :]) / 2

    def _rows(self, names: Sequence[str], decoded: Sequence[np.ndarray | str], top_k: int,
              threshold: float | None, tta: bool = False) -> list[Row]:
        good = [i for i, img in enumerate(decoded) if not isinstance(img, str)]
        rows: list[Row] = [
            {"path": name, "label": None, "confidence": None, "top_k": [], "error": img if isinstance(img, str) else None}
            for name, img in zip(names, decoded)
        ]
        if not good:
            return rows
        probs = self.probabilities([decoded[i] for i in good], tta)
        values, indices = probs.topk(top_k, dim=1)
        for row_index, vals, idxs in zip(good, values.tolist(), indices.tolist()):
            ranked = [{"label": self.classes[j], "confidence": round(v, 6)} for v, j in zip(vals, idxs)]
            confidence = ranked[0]["confidence"]
            below = threshold is not None and confidence < threshold
            rows[row_index].update(label=UNKNOWN if below else ranked[0]["label"], confidence=confidence, top_k=ranked)
        return rows

    def predict_files(self, files: Sequence[tuple[str, Path]], top_k: int = 1, threshold: float | None = None,
                      roots: Sequence[Path] | None = None, should_stop: Callable[[], bool] | None = None,
                      tta: bool = False) -> list[Row]:
        """One row per (name, path), in order; the next batch decodes on a thread pool while this one runs.

        tta averages each image's and its mirror image's probabilities (Predictor.probabilities).

        With roots set, a file whose real path lies outside them is not read (error row). should_stop is asked
        before each batch; when it says yes, Stopped is raised.
        """
        top_k = max(1, min(top_k, len(self.classes)))
        batches = [files[i : i + self.batch_size] for i in range(0, len(files), self.batch_size)]
        rows: list[Row] = []
        short = self.prep.resize
        with ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode") as pool:

            def submit(batch: Iterable[tuple[str, Path]]) -> list[Future]:
                return [pool.submit(_decode, path, short, self.max_pixels, roots) for _, path in batch]

            pending = submit(batches[0]) if batches else []
            for index, batch in enumerate(batches):
                if should_stop is not None and should_stop():
                    raise Stopped(f"stopped before batch {index + 1} of {len(batches)}")
                decoded = [future.result() for future in pending]
                pending = submit(batches[index + 1]) if index + 1 < len(batches) else []
                rows.extend(self._rows([name for name, _ in batch], decoded, top_k, threshold, tta))
        return rows


def summarize(rows: Iterable[Row]) -> dict[str, Any]:
    """Counts: files, per label, unknown, errors."""
    labels: dict[str, int] = {}
    files = errors = 0
    for row in rows:
        files += 1
        if row["error"]:
            errors += 1
        elif row["label"] is not None:
            labels[row["label"]] = labels.get(row["label"], 0) + 1
    return {"files": files, "labels": dict(sorted(labels.items())), "unknown": labels.get(UNKNOWN, 0), "errors": errors}
