"""The pure prediction core: a trained model's eval transform, batched inference, decoding overlapping inference.

No Flask, Celery or SQLAlchemy here. Every input file gives exactly one row; unreadable ones get an error.
Inference runs on a runtime from worker.core.runtimes (OpenVINO fp32 by default, eager PyTorch as the fallback).
"""
from __future__ import annotations

import copy
import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from graft.worker.core.backbones import Classifier
from graft.worker.core.batching import choose_batch_size
from graft.worker.core.checkpoint import load_model_artifact
from graft.shared.files import display_name, is_junk_name
from graft.shared.thumbs import result_thumb_name
from graft.shared.params import PRECISIONS  # bf16 (eager PyTorch only): ~2x faster, top-1 may differ on near-ties
from graft.worker.core.images import DEFAULT_MAX_PIXELS, ImageError, decode_image
from graft.worker.core.thumbnails import save_thumbnail
from graft.worker.core.runtimes import DEFAULT_RUNTIME, RUNTIMES, TORCH, Normalized, Runner, RuntimeUnavailable, make_runner
from graft.worker.core.transforms import Preprocessing, center_crop
from graft.worker.core.trust import Options, Trust
from graft.worker.core.stop import Stopped

log = logging.getLogger(__name__)

BATCH_SIZE = 32  # without a measurement (a Predictor built by hand); from_artifact measures (worker.core.batching)
LOOKAHEAD = 2  # batches decoded ahead of the one being classified
Row = dict[str, Any]


@dataclass
class Listing:
    """The files of an input folder as (relative posix path, absolute path), how many were ignored, and how many
    names were not UTF-8 (listed in their escaped form, shared.files.display_name)."""

    files: list[tuple[str, Path]]
    ignored: int = 0
    non_utf8: int = 0


def list_input_files(root: Path, recursive: bool = True) -> Listing:
    """Every file below root (symlinks not followed into folders), sorted by relative path.

    Hidden files, OS litter (Thumbs.db, __MACOSX/) and symlinked folders are counted as ignored, not listed;
    without recursive, subfolders are simply not searched.
    """
    root = Path(root)
    files: list[tuple[str, Path]] = []
    ignored = non_utf8 = 0
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
            relative = path.relative_to(root).as_posix()
            shown = display_name(relative)  # a name that is not UTF-8 is classified all the same, shown escaped
            non_utf8 += shown != relative
            files.append((shown, path))
    files.sort(key=lambda item: item[0])
    unique = [item for i, item in enumerate(files) if i == 0 or item[0] != files[i - 1][0]]
    # An escaped name that is also another file's real name: the second one is left out, not written twice.
    return Listing(unique, ignored + len(files) - len(unique), non_utf8)


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


def _decode_crop(path: Path, short_side: int, crop: int, max_pixels: int | None,
                 roots: Sequence[Path] | None, thumb: Path | None = None) -> np.ndarray | str:
    """_decode, then the centre crop, on the decode thread: the inference thread only stacks ready crops.

    With thumb, the decoded image's thumbnail is written there too (decoding the file again for it cost a predict
    job a fifth of its time)."""
    img = _decode(path, short_side, max_pixels, roots)
    if isinstance(img, str):
        return img
    if thumb is not None:
        save_thumbnail(img, thumb)
    return np.ascontiguousarray(center_crop(img, crop))


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


def crop_batch(images: Sequence[np.ndarray], prep: Preprocessing) -> np.ndarray:
    """Centre crops of images already resized to prep.resize, as one uint8 (N, crop, crop, 3) array."""
    return np.stack([center_crop(img, prep.crop) for img in images])


class Predictor:
    """A loaded model with its classes and eval transform, ready to classify files or decoded images."""

    def __init__(self, runner: Runner, classes: Sequence[str], prep: Preprocessing,
                 batch_size: int | None = BATCH_SIZE, decode_threads: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, trust: Trust | None = None) -> None:
        self.runner, self.classes, self.prep = runner, list(classes), prep
        self.trust = trust or Trust()  # calibration, per-class thresholds, OOD scorer (worker.core.trust)
        self.batch_size = max(1, batch_size or BATCH_SIZE)
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
        trust = Trust.from_meta(meta)
        model = model.to(memory_format=torch.channels_last).eval()
        runner: Runner | None = None
        if precision == "fp32" and runtime != TORCH:
            try:
                runner = make_runner(runtime, Normalized(trust.network(model), prep.mean, prep.std), prep.crop)
            except RuntimeUnavailable as exc:
                log.warning("runtime %s unavailable for %s, using torch fp32: %s", runtime, path, exc)
        if runner is None:
            runner = cls._torch_runner(model, prep, precision, optimize, trust)
        if kwargs.get("batch_size") is None:
            kwargs["batch_size"] = choose_batch_size(runner, prep.crop)[0]
        return cls(runner, meta["classes"], prep, trust=trust, **kwargs)

    @staticmethod
    def _torch_runner(model: Classifier, prep: Preprocessing, precision: str, optimize: bool,
                      trust: Trust | None = None) -> Runner:
        if optimize:
            model = optimize_for_cpu(model)
        dtype = torch.float32
        if precision == "bf16":
            if bf16_native():
                dtype = torch.bfloat16
                model = model.to(dtype)
            else:
                log.info("bf16 asked for but this CPU has no native bf16: running fp32")
        net = trust.network(model) if trust is not None else model
        return make_runner(TORCH, Normalized(net, prep.mean, prep.std, dtype), prep.crop)

    def outputs(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Float32 logits and pooled features (None without an OOD scorer) for images decoded to the resize size."""
        logits, features = self.trust.split(self.runner(crop_batch(images, self.prep)), len(self.classes))
        return logits.astype(np.float32, copy=False), features

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Float32 logits for images already decoded to the model's resize size."""
        return self.outputs(images)[0]

    def _tta_outputs(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities averaged over each crop and its mirror image, and the plain crops' features.

        The OOD score keeps the plain view's features: the scorer's bank and threshold were fitted on plain-view
        features, and a mean of two views' features is not a point of that distribution.
        """
        crops = crop_batch(images, self.prep)
        n = len(self.classes)
        logits, features = self.trust.split(self.runner(crops), n)
        mirrored = self.trust.split(self.runner(np.ascontiguousarray(crops[:, :, ::-1])), n)[0]
        probs = (self.trust.probabilities(logits.astype(np.float32)) + self.trust.probabilities(
            mirrored.astype(np.float32))) / 2
        return probs, features

    def probabilities(self, images: Sequence[np.ndarray], tta: bool = False) -> torch.Tensor:
        """Calibrated (temperature-scaled) class probabilities for images already decoded to the resize size.

        With tta, the mean of each crop's and its mirror image's calibrated probabilities (two runner calls).
        """
        if tta:
            return torch.from_numpy(self._tta_outputs(images)[0]).float()
        return torch.from_numpy(self.trust.probabilities(self.logits(images))).float()

    def _rows(self, names: Sequence[str], decoded: Sequence[np.ndarray | str], top_k: int,
              options: Options, tta: bool = False) -> list[Row]:
        good = [i for i, img in enumerate(decoded) if not isinstance(img, str)]
        rows: list[Row] = [
            {"path": name, "label": None, "confidence": None, "top_k": [], "ood_score": None, "reason": None,
             "error": img if isinstance(img, str) else None}
            for name, img in zip(names, decoded)
        ]
        if not good:
            return rows
        if tta:
            probabilities, features = self._tta_outputs([decoded[i] for i in good])
        else:
            logits, features = self.outputs([decoded[i] for i in good])
            probabilities = self.trust.probabilities(logits)
        probs = torch.from_numpy(probabilities)
        values, indices = probs.topk(top_k, dim=1)
        scores = self.trust.ood_scores(features, len(good))
        for row_index, vals, idxs, score in zip(good, values.tolist(), indices.tolist(), scores):
            ranked = [{"label": self.classes[j], "confidence": round(v, 6)} for v, j in zip(vals, idxs)]
            rows[row_index].update(confidence=ranked[0]["confidence"], top_k=ranked,
                                   **self.trust.judge(ranked, score, options))
        return rows

    def predict_files(self, files: Sequence[tuple[str, Path]], top_k: int = 1, threshold: float | None = None,
                      roots: Sequence[Path] | None = None, should_stop: Callable[[], bool] | None = None,
                      target_precision: float | None = None, reject_ood: bool = True, tta: bool = False,
                      thumbs_dir: Path | None = None, thumbs: int = 0) -> list[Row]:
        """One row per (name, path), in order; the next batches decode and crop on a thread pool while this one runs.

        With thumbs_dir, the first `thumbs` readable files' thumbnails are written there as result_thumb_name(name).

        tta averages each image's and its mirror image's calibrated probabilities (Predictor.probabilities).

        With roots set, a file whose real path lies outside them is not read (error row). should_stop is asked
        before each batch; when it says yes, Stopped is raised. Each row has ood_score and, when its label is
        `unknown`, a reason: unlike the training images (unless reject_ood is false), or below threshold or the
        class's threshold for target_precision (worker.core.trust).
        """
        options = Options(threshold, target_precision, reject_ood)
        top_k = max(1, min(top_k, len(self.classes)))
        batches = [files[i : i + self.batch_size] for i in range(0, len(files), self.batch_size)]
        rows: list[Row] = []
        short = self.prep.resize
        pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")
        try:

            def submit(index: int) -> list[Future]:
                first = index * self.batch_size
                return [pool.submit(_decode_crop, path, short, self.prep.crop, self.max_pixels, roots,
                                    thumbs_dir / result_thumb_name(name) if thumbs_dir and first + j < thumbs else None)
                        for j, (name, path) in enumerate(batches[index])]

            pending = deque(submit(i) for i in range(min(LOOKAHEAD, len(batches))))
            for index, batch in enumerate(batches):
                if should_stop is not None and should_stop():
                    raise Stopped(f"stopped before batch {index + 1} of {len(batches)}")
                decoded = [future.result() for future in pending.popleft()]
                if index + LOOKAHEAD < len(batches):
                    pending.append(submit(index + LOOKAHEAD))
                rows.extend(self._rows([name for name, _ in batch], decoded, top_k, options, tta))  # crop again = same
        finally:
            pool.shutdown(cancel_futures=True)  # a stop does not wait for the batches decoded ahead
        return rows

