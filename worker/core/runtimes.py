"""Inference runtimes for prediction. Each takes a batch of uint8 RGB crops (N, H, W, 3) and returns float32 logits.

OpenVINO fp32 is the default: on 2 cores it runs ResNet-18 ~25 % and EfficientNet-Lite0 ~4x faster than eager
PyTorch with the same top-1 on every image tried (bench/predict_runtimes.py compares the candidates; bf16 and int8
were rejected there for changing labels). Eager PyTorch stays as the fallback and for bf16.

The eval transform's normalisation runs inside the model graph (`Normalized`), so every runtime gets the same input
and does the same arithmetic. OpenVINO is imported only when a model is loaded for it, i.e. in a worker's pool child
(or the API process for synchronous predictions), never in the Celery main process. Models are converted in memory
from the loaded PyTorch module (no ONNX file, nothing written to disk). No Flask, Celery or SQLAlchemy here.
"""
from __future__ import annotations

import logging
import sys
import threading
import warnings
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import nn

from graft.shared.params import RUNTIMES

log = logging.getLogger(__name__)

OPENVINO, TORCH = "openvino", "torch"  # the names in RUNTIMES (graft.shared.params, their one home)
DEFAULT_RUNTIME = OPENVINO


class RuntimeUnavailable(RuntimeError):
    """The runtime's package is missing or it could not convert this model."""


class Runner(Protocol):
    """A loaded model: uint8 crops (N, H, W, 3) in, float32 logits (N, classes) out; safe to call from threads."""

    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class Normalized(nn.Module):
    """model((x / 255 - mean) / std) for x a uint8 NHWC batch: the same arithmetic as transforms.eval_batch.

    NHWC permuted to NCHW is channels-last in memory, which is what the CPU kernels want.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype
        self.register_buffer("mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float().div(255).sub(self.mean).div(self.std)
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        return self.model(x)


class TorchRunner:
    """Eager PyTorch (fp32 or bf16); the fallback when no other runtime is available."""

    name = TORCH

    def __init__(self, net: Normalized) -> None:
        self.net = net.eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net(torch.from_numpy(batch)).float().numpy()


def import_openvino():  # noqa: ANN201 - the openvino module
    """openvino, with its usage telemetry off.

    A plain `import openvino` sends a usage event to Google Analytics and writes ~/intel/ whenever the optional
    openvino-telemetry package is installed (a pip dependency of openvino). Marking that package absent before the
    first import makes OpenVINO use its built-in no-op stub: a self-hosted service must not phone home.
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # None in sys.modules: `import` raises ImportError
    import openvino

    return openvino


class OpenVINORunner:
    """OpenVINO CPU plugin in fp32 (inference precision pinned to f32: its bf16 default would change results)."""

    name = OPENVINO

    def __init__(self, net: Normalized, crop: int, threads: int) -> None:
        try:
            ov = import_openvino()
        except ImportError as exc:
            raise RuntimeUnavailable(f"openvino is not installed ({exc})") from None
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": max(1, threads), "ENABLE_CPU_PINNING": False}
        example = torch.zeros(2, crop, crop, 3, dtype=torch.uint8)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer chatter about the model's Python control flow
                model = ov.convert_model(net.eval(), example_input=example, input=[([-1, crop, crop, 3], ov.Type.u8)])
            self.compiled = ov.Core().compile_model(model, "CPU", config)
        except Exception as exc:  # noqa: BLE001 - any conversion failure means "use torch instead"
            raise RuntimeUnavailable(f"openvino cannot convert this model: {type(exc).__name__}: {exc}") from None
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._request.infer({0: np.ascontiguousarray(batch)})[0].copy()


def make_runner(runtime: str, net: Normalized, crop: int, threads: int | None = None) -> Runner:
    """A runner for net on runtime, with threads (default: torch's, which the worker sets to its share of the cores).

    RuntimeUnavailable when that runtime cannot run the model here.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == TORCH:
        return TorchRunner(net)
    return OpenVINORunner(net, crop, threads or torch.get_num_threads())
