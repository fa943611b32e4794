"""The pure exporter: a trained model artifact as a self-contained zip in one format, runnable without Graft.

Every format holds the same graph: uint8 RGB crops (N, crop, crop, 3) in, softmax probabilities (N, classes) out,
with the normalisation (runtimes.Normalized, the very module Graft predicts with) and the softmax baked in, so a
caller only decodes, resizes and centre-crops. The zip also holds labels.json, preprocessing.json, metrics.json
and a README.md whose snippet reproduces Graft's probabilities. No Flask, Celery or SQLAlchemy here.
"""
from __future__ import annotations

import io
import json
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from graft.shared.exports import EXPORT_FORMATS
from graft.shared.storage import atomic_write_bytes
from graft.worker.core.checkpoint import load_model_artifact
from graft.worker.core.runtimes import Normalized, import_openvino
from graft.worker.core.transforms import Preprocessing

MODEL_FILES = {"onnx": ("model.onnx",), "torchscript": ("model.torchscript.pt",),
               "openvino": ("model.xml", "model.bin"), "pt": ("model.pt2",)}
INPUT, OUTPUT = "image", "probabilities"
MAX_BATCH = 4096


class Probabilities(nn.Module):
    """softmax(Normalized(model)(x) / T) for x a uint8 NHWC RGB batch: Graft's own arithmetic, its calibration
    temperature T (worker.core.calibration), then its softmax."""

    def __init__(self, model: nn.Module, prep: Preprocessing, temperature: float = 1.0) -> None:
        super().__init__()
        self.net, self.temperature = Normalized(model, prep.mean, prep.std), float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x).float() / self.temperature, dim=1)


def _example(crop: int) -> torch.Tensor:
    # Batch 2, not 1: torch.export specialises a dimension of size 1 and the batch must stay dynamic.
    return torch.zeros(2, crop, crop, 3, dtype=torch.uint8)


def _program(net: nn.Module, crop: int) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():  # under grad mode the program keeps a set_grad_enabled node that torch.export.load rejects
        return torch.export.export(net, (_example(crop),), dynamic_shapes=({0: batch},))


def _onnx(net: nn.Module, crop: int, folder: Path) -> None:
    torch.onnx.export(_program(net, crop), (_example(crop),), folder / "model.onnx", input_names=[INPUT],
                      output_names=[OUTPUT], dynamo=True, external_data=False, verbose=False)


def _torchscript(net: nn.Module, crop: int, folder: Path) -> None:
    with torch.no_grad():  # tracing: every model here is a plain feed-forward graph, no data-dependent branches
        traced = torch.jit.trace(net, _example(crop), check_trace=False)
    traced.save(str(folder / "model.torchscript.pt"))


def _openvino(net: nn.Module, crop: int, folder: Path) -> None:
    ov = import_openvino()  # telemetry off, as for prediction
    with torch.no_grad():
        model = ov.convert_model(net, example_input=_example(crop), input=[([-1, crop, crop, 3], ov.Type.u8)])
    # fp32 weights: save_model's fp16 compression default would move the probabilities away from Graft's.
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)


def _pt(net: nn.Module, crop: int, folder: Path) -> None:
    torch.export.save(_program(net, crop), folder / "model.pt2")


WRITERS: dict[str, Callable[[nn.Module, int, Path], None]] = {
    "onnx": _onnx, "torchscript": _torchscript, "openvino": _openvino, "pt": _pt,
}


def preprocessing_doc(prep: Preprocessing, num_classes: int) -> dict[str, Any]:
    """preprocessing.json: exactly what Graft does to an image before the exported graph sees it."""
    return {
        "decode": "OpenCV, colour order RGB; a JPEG whose shorter side is at least 8, 4 or 2 times resize_short_side "
                  "is decoded at 1/8, 1/4 or 1/2 scale (cv2.IMREAD_REDUCED_COLOR_8/4/2, the first that fits)",
        "resize_short_side": prep.resize,
        "resize": "shorter side to resize_short_side, keeping the aspect ratio: new size (max(short, round(w*s)), "
                  "max(short, round(h*s))) with s = short / min(w, h); cv2.INTER_AREA when shrinking, "
                  "cv2.INTER_LINEAR when enlarging; unchanged when the shorter side already matches",
        "centre_crop": prep.crop,
        "crop": "top = round((h - crop) / 2), left = round((w - crop) / 2) (Python round)",
        "input": {"name": INPUT, "layout": "NHWC", "shape": [-1, prep.crop, prep.crop, 3], "dtype": "uint8",
                  "colour_order": "RGB", "range": [0, 255]},
        "normalisation": "baked in: the model computes (x / 255 - mean) / std itself",
        "mean": list(prep.mean), "std": list(prep.std),
        "output": {"name": OUTPUT, "shape": [-1, num_classes], "dtype": "float32",
                   "meaning": "softmax probabilities (baked in), in the order of labels.json"},
    }


PREPROCESS_SNIPPET = '''\
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

PREP = json.loads(Path("preprocessing.json").read_text())
LABELS = json.loads(Path("labels.json").read_text())


def preprocess(path):
    """uint8 RGB (crop, crop, 3), exactly as Graft prepares an image."""
    short, crop = PREP["resize_short_side"], PREP["centre_crop"]
    with Image.open(path) as im:  # header only: Graft picks a reduced JPEG decode from the size
        w, h = im.size
    flags = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
    flag = next((f for k, f in flags if min(w, h) // k >= short), cv2.IMREAD_COLOR)
    img = cv2.cvtColor(cv2.imdecode(np.fromfile(path, np.uint8), flag), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    s = short / min(h, w)
    if s != 1:
        img = cv2.resize(img, (max(short, round(w * s)), max(short, round(h * s))),
                         interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    h, w = img.shape[:2]
    top, left = round((h - crop) / 2), round((w - crop) / 2)
    return img[top:top + crop, left:left + crop]
'''

PREDICT_SNIPPETS = {
    "onnx": '''\
import onnxruntime as ort

session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])


def predict(paths):
    """Probabilities (N, classes) for image files, in the order of LABELS."""
    return session.run(None, {"image": np.stack([preprocess(p) for p in paths])})[0]
''',
    "torchscript": '''\
import torch

model = torch.jit.load("model.torchscript.pt").eval()


def predict(paths):
    """Probabilities (N, classes) for image files, in the order of LABELS."""
    with torch.inference_mode():
        return model(torch.from_numpy(np.stack([preprocess(p) for p in paths]))).numpy()
''',
    "openvino": '''\
import openvino as ov

compiled = ov.Core().compile_model("model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def predict(paths):
    """Probabilities (N, classes) for image files, in the order of LABELS."""
    return compiled(np.stack([preprocess(p) for p in paths]))[0]
''',
    "pt": '''\
import torch

model = torch.export.load("model.pt2").module()


def predict(paths):
    """Probabilities (N, classes) for image files, in the order of LABELS."""
    with torch.inference_mode():
        return model(torch.from_numpy(np.stack([preprocess(p) for p in paths]))).numpy()
''',
}

FORMAT_NOTES = {
    "onnx": "`model.onnx`: an ONNX graph (opset of torch's dynamo exporter); run it with `pip install onnxruntime`.",
    "torchscript": "`model.torchscript.pt`: a traced TorchScript module; `torch.jit.load` needs only PyTorch (and "
                   "LibTorch in C++). PyTorch now deprecates TorchScript (a FutureWarning): prefer `pt` in Python.",
    "openvino": "`model.xml` + `model.bin`: OpenVINO IR with fp32 weights; run it with `pip install openvino`. "
                "(Pin `INFERENCE_PRECISION_HINT` to f32: OpenVINO's bf16 default on some CPUs changes results.)",
    "pt": "`model.pt2`: a `torch.export` ExportedProgram (`torch.export.save`); `torch.export.load` needs only "
          "PyTorch (same or newer major version), no Graft code and no pickled classes.",
}


def readme(fmt: str, model_id: str | None) -> str:
    """README.md: what each file is, and a snippet that classifies images with this format's runtime alone."""
    name = f"Graft model {model_id}" if model_id else "Graft model"
    return (
        f"# {name} ({fmt})\n\n"
        f"- {FORMAT_NOTES[fmt]}\n"
        "  Input: uint8 RGB images, NHWC `(N, crop, crop, 3)`; output: softmax probabilities `(N, classes)`.\n"
        "  Normalisation (mean/std), the calibration temperature and the softmax are inside the model. Graft's\n"
        "  `ood_score` and `unknown` label are not: they need the training features kept on the server.\n"
        "- `labels.json`: the class names, in the order of the output columns.\n"
        "- `preprocessing.json`: how Graft decodes, resizes and centre-crops an image (follow it exactly to get\n"
        "  Graft's probabilities; other resizers give slightly different numbers).\n"
        "- `metrics.json`: the model's validation metrics from training.\n\n"
        "## Inference (run from the unzipped folder; needs numpy, opencv-python and Pillow)\n\n"
        f"```python\n{PREPROCESS_SNIPPET}\n\n{PREDICT_SNIPPETS[fmt]}```\n\n"
        "```python\nfor path, row in zip([\"photo.jpg\"], predict([\"photo.jpg\"])):\n"
        "    print(path, LABELS[int(row.argmax())], float(row.max()))\n```\n"
    )


def build_export(artifact: Path, fmt: str, metrics: dict[str, Any] | None = None,
                 model_id: str | None = None) -> bytes:
    """The zip (bytes) of model artifact in format fmt; metrics default to the artifact's own."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    model, meta = load_model_artifact(Path(artifact))
    prep: Preprocessing = meta["preprocessing"]
    net = Probabilities(model, prep, (meta.get("calibration") or {}).get("temperature", 1.0)).eval()
    documents = {
        "labels.json": json.dumps(meta["classes"], indent=2),
        "preprocessing.json": json.dumps(preprocessing_doc(prep, len(meta["classes"])), indent=2),
        "metrics.json": json.dumps(metrics if metrics is not None else meta.get("metrics", {}), indent=2),
        "README.md": readme(fmt, model_id),
    }
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="graft-export-") as tmp:
        with warnings.catch_warnings():
            # Exporter chatter (the TorchScript deprecation FutureWarning, tracer and serializer notes) says
            # nothing about this model; the formats are checked against Graft's predictions in the tests.
            warnings.simplefilter("ignore")
            WRITERS[fmt](net, prep.crop, Path(tmp))
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in MODEL_FILES[fmt]:
                archive.write(Path(tmp) / name, name)
            for name, text in documents.items():
                archive.writestr(name, text)
    return buffer.getvalue()


def write_export(artifact: Path, fmt: str, dest: Path, metrics: dict[str, Any] | None = None,
                 model_id: str | None = None) -> Path:
    """Build the zip and write it to dest atomically (temp file, then os.replace): readers never see half a zip."""
    atomic_write_bytes(Path(dest), build_export(artifact, fmt, metrics, model_id))
    return Path(dest)
