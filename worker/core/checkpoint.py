"""Checkpoints and model artifacts: plain dicts of tensors, saved atomically, loaded with weights_only=True."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from graft.shared.storage import atomic_write_bytes, atomic_write_json
from graft.worker.core.backbones import Classifier, build_model
from graft.worker.core.transforms import Preprocessing

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
META_NAME = "model.json"
ARTIFACT_FORMAT = "graft-model/1"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, then os.replace: a crash never leaves half a file."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write a training checkpoint (model, optimizer, scheduler, epoch, config, classes, ...)."""
    missing = {"model", "optimizer", "scheduler", "epoch", "config", "classes"} - state.keys()
    if missing:
        raise ValueError(f"checkpoint lacks {sorted(missing)}")
    atomic_torch_save(state, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint (tensors and plain data only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_model_artifact(folder: Path, model: Classifier, meta: dict[str, Any],
                        tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write model.pt (weights + meta + extra tensors) and model.json (meta, human-readable) into folder."""
    payload = {"format": ARTIFACT_FORMAT, "state_dict": model.state_dict(), **meta, **(tensors or {})}
    atomic_torch_save(payload, folder / MODEL_NAME)
    atomic_write_json(folder / META_NAME, meta)
    return folder / MODEL_NAME


def load_model_artifact(path: Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a trained model (eval mode) and its meta from model.pt; needs no pretrained weights file."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if payload.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"{path} is not a Graft model artifact")
    state = payload.pop("state_dict")
    payload.pop("format")
    model = build_model(payload["backbone"], len(payload["classes"]), pretrained=False)
    model.load_state_dict(state)
    model.eval()
    payload["preprocessing"] = Preprocessing.from_dict(payload["preprocessing"])
    return model, payload
