"""The frozen trunk for the caching pass, on the fastest runtime here: OpenVINO fp32, eager PyTorch as the fallback.

One graph (`TrunkGraph`) takes uint8 NHWC crops and returns both things the cache keeps: the activations entering
the first trainable stage (NHWC) and the pooled features after the last stage. Normalisation runs inside it, with
the arithmetic of transforms.eval_batch, so every runtime gets the same input. OpenVINO is converted once per trunk
(architecture, weights, cut point, crop size): the IR is kept on disk under the worker's cache folder (a few,
least recently used dropped) and the compiled model in this process. OpenVINO is imported only here, when a
training job runs, i.e. in a worker's pool child, never in the Celery main process. Trainable stages stay in PyTorch.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from graft.worker.core.backbones import Classifier
from graft.worker.core.runtimes import OPENVINO, TORCH, import_openvino
from graft.worker.core.transforms import Preprocessing

log = logging.getLogger(__name__)

TRUNK_FORMAT = "trunk1"  # bump when TrunkGraph's arithmetic changes: cached activations then no longer match
KEEP_IR = 4  # converted trunks kept on disk per worker (each ~15-45 MB)
# How far OpenVINO's activations may be from eager PyTorch's (np.testing.assert_allclose). Measured: 6e-5 at most on
# Lite0's 14x14x112 maps (the cut before the fine-tune became the head conv only) whose values reach 24, i.e. float32
# rounding from another order of operations, 10x under this; tests/unit/test_trunk_cache.py holds today's cut to it.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-3}
_COMPILED: dict[str, object] = {}  # this process's compiled OpenVINO trunk (one: they are large)
_COMPILED_LOCK = threading.Lock()


class TrunkGraph(nn.Module):
    """uint8 NHWC crops -> (activations after stages[:split_at], NHWC; pooled features after every stage)."""

    def __init__(self, model: Classifier, split_at: int, prep: Preprocessing) -> None:
        super().__init__()
        self.model, self.split_at = model, split_at
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.permute(0, 3, 1, 2).float().div(255).sub(self.mean).div(self.std)  # NHWC seen as channels-last NCHW
        h = self.model.run_stages(x, 0, self.split_at)
        pooled = self.model.pool(self.model.run_stages(h, self.split_at))
        return h.permute(0, 2, 3, 1), pooled


class TrunkRunner(Protocol):
    """uint8 crops (N, crop, crop, 3) in; float32 (maps (N, H, W, C), pooled (N, D)) out."""

    name: str

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def trunk_id(model: Classifier, split_at: int, prep: Preprocessing) -> str:
    """What the cached activations depend on: architecture, every stage's weights, cut point and preprocessing."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{TRUNK_FORMAT}|{split_at}|{prep.crop}|{prep.resize}|{prep.mean}|{prep.std}|".encode())
    h.update(repr(model.stages).encode())
    for name, tensor in model.stages.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class TorchTrunk:
    """Eager PyTorch: the fallback, and the reference the OpenVINO trunk is tested against."""

    name = TORCH

    def __init__(self, graph: TrunkGraph) -> None:
        self.graph = graph.eval()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            maps, pooled = self.graph(torch.from_numpy(np.ascontiguousarray(batch)))
            return maps.contiguous().numpy(), pooled.numpy()


class OpenVINOTrunk:
    """OpenVINO CPU plugin, fp32 pinned (its bf16 default would move the activations)."""

    name = OPENVINO

    def __init__(self, compiled: object) -> None:
        self._request = compiled.create_infer_request()  # type: ignore[attr-defined]
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            out = self._request.infer({0: np.ascontiguousarray(batch)})
            return out[0].copy(), out[1].copy()


def _convert(ov: object, graph: TrunkGraph, crop: int) -> object:
    example = torch.zeros(2, crop, crop, 3, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about the model's Python control flow
        return ov.convert_model(graph.eval(), example_input=example,  # type: ignore[attr-defined]
                                input=[([-1, crop, crop, 3], ov.Type.u8)])  # type: ignore[attr-defined]


def _prune(folder: Path, keep: int) -> None:
    """Keep the `keep` most recently used converted trunks in folder."""
    entries = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _model_from_disk(ov: object, core: object, graph: TrunkGraph, crop: int, key: str, ir_dir: Path | None) -> object:
    """The converted trunk: read from ir_dir/key when an earlier job wrote it, converted (and written) otherwise."""
    if ir_dir is None:
        return _convert(ov, graph, crop)
    folder = ir_dir / key
    xml = folder / "trunk.xml"
    if xml.is_file():
        try:
            model = core.read_model(str(xml))  # type: ignore[attr-defined]
            os.utime(folder)  # most recently used
            return model
        except Exception as exc:  # noqa: BLE001 - a damaged file is converted again
            log.warning("trunk IR %s unreadable (%s): converting again", xml, exc)
    model = _convert(ov, graph, crop)
    try:
        ir_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=ir_dir))
        ov.save_model(model, str(tmp / "trunk.xml"), compress_to_fp16=False)  # type: ignore[attr-defined]
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)  # readers see the whole IR or none
        _prune(ir_dir, KEEP_IR)
    except Exception as exc:  # noqa: BLE001 - a full or read-only disk: convert again next time
        log.warning("cannot keep the trunk IR in %s (%s)", ir_dir, exc)
    return model


def openvino_trunk(graph: TrunkGraph, crop: int, key: str, ir_dir: Path | None, threads: int) -> OpenVINOTrunk:
    """The OpenVINO trunk for key, compiled once per process; ImportError or RuntimeError when OpenVINO cannot."""
    with _COMPILED_LOCK:
        compiled = _COMPILED.get(key)
        if compiled is None:
            ov = import_openvino()
            core = ov.Core()
            t0 = time.monotonic()
            model = _model_from_disk(ov, core, graph, crop, key, ir_dir)
            config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                      "INFERENCE_NUM_THREADS": max(1, threads), "ENABLE_CPU_PINNING": False}
            compiled = core.compile_model(model, "CPU", config)
            _COMPILED.clear()
            _COMPILED[key] = compiled
            log.info("openvino trunk %s ready in %.1f s", key[:12], time.monotonic() - t0)
    return OpenVINOTrunk(compiled)


def make_trunk(model: Classifier, split_at: int, prep: Preprocessing, runtime: str = OPENVINO,
               ir_dir: Path | None = None, key: str | None = None) -> TrunkRunner:
    """The caching pass's trunk on runtime; OpenVINO that is missing or fails falls back to PyTorch (logged)."""
    graph = TrunkGraph(model, split_at, prep).eval()
    if runtime == OPENVINO:
        try:
            return openvino_trunk(graph, prep.crop, key or trunk_id(model, split_at, prep), ir_dir,
                                  torch.get_num_threads())
        except Exception as exc:  # noqa: BLE001 - any OpenVINO failure means "use torch instead"
            log.warning("openvino unavailable for the caching pass, using torch: %s: %s", type(exc).__name__, exc)
    return TorchTrunk(graph)
