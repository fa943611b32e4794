"""Model exports: the formats a trained model downloads in, and where a built export zip lives on disk.

The API only reads these files; a worker builds them (graft.worker.export_runner) and writes them atomically, one
build per model and format (graft.shared.export_builds).
"""
from __future__ import annotations

from pathlib import Path

from graft.shared.storage import model_dir

EXPORT_FORMATS = ("onnx", "torchscript", "openvino", "pt")


def exports_dir(artifacts_dir: Path, model_id: str) -> Path:
    """Folder of a model's built exports: artifacts/models/<id>/exports."""
    return model_dir(artifacts_dir, model_id) / "exports"


def export_zip(artifacts_dir: Path, model_id: str, fmt: str) -> Path:
    """The cached zip of one format (present only once complete: written to a temp file, then os.replace)."""
    return exports_dir(artifacts_dir, model_id) / f"{fmt}.zip"


def export_error(artifacts_dir: Path, model_id: str, fmt: str) -> Path:
    """Where a worker records why building one format failed (plain text); the API reports it for FAILED_HOLD_S."""
    return exports_dir(artifacts_dir, model_id) / f"{fmt}.error"


def download_name(model_id: str, fmt: str) -> str:
    """The file name a client saves the zip under."""
    return f"graft-model-{model_id}-{fmt}.zip"
