"""Where workers keep small JPEG thumbnails and a model's out-of-sample predictions; bounded files the API serves.

Workers write them (they decode images already); the API only reads them, by a name it checks, from a folder named
by the object's own id, never by a path from the request.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from graft.shared.storage import atomic_write_json

PREDICTIONS_FILE = "val_predictions.json"  # in the model's folder
THUMBS_DIR = "thumbs"  # in the model's folder; a dataset's are under artifacts/thumbs/datasets/<id>/
MAX_STORED_PREDICTIONS = 2000  # misclassified ones first, so every error is kept up to this bound
THUMB_SIDE = 160  # the longer side, in pixels
PER_CLASS_THUMBS = 4  # a dataset's report shows this many images of each class
THUMB_NAME = re.compile(r"^(?:[0-9]{1,6}|[0-9a-f]{20})\.jpg$")
RESULT_THUMBS_PER_CHUNK, RESULT_THUMB_CHUNKS = 100, 5  # at most 500 a predict job (~3 ms each, from decoded pixels)


def dataset_thumbs_dir(artifacts_dir: Path, dataset_id: str) -> Path:
    """Thumbnails of a dataset's classes (outside its data folder: a server folder is the user's, never written)."""
    return Path(artifacts_dir) / "thumbs" / "datasets" / dataset_id


def job_thumbs_dir(artifacts_dir: Path, job_id: str) -> Path:
    """Thumbnails of a predict job's first result images (its upload is removed when the job ends)."""
    return Path(artifacts_dir) / "thumbs" / "jobs" / job_id


def result_thumb_name(path: str) -> str:
    """The thumbnail file name of a result row's path (a hash: the path itself may hold any character)."""
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:20] + ".jpg"


def thumb_file(folder: Path, name: str) -> Path | None:
    """The thumbnail called name in folder (symlinks resolved, and still inside it), or None."""
    if not THUMB_NAME.match(name):
        return None
    base = Path(folder).resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


def keep_bounded(records: list[dict[str, Any]], limit: int = MAX_STORED_PREDICTIONS) -> list[dict[str, Any]]:
    """At most limit records: every misclassified one first (up to limit), then correct ones, in their order."""
    wrong = [r for r in records if r["true"] != r["predicted"]]
    right = [r for r in records if r["true"] == r["predicted"]]
    kept = {id(r) for r in (wrong + right)[:limit]}
    return [r for r in records if id(r) in kept]


def write_predictions(model_folder: Path, records: list[dict[str, Any]], total: int) -> None:
    """Store a model's validation predictions (already bounded), with how many the split held."""
    atomic_write_json(Path(model_folder) / PREDICTIONS_FILE, {"total": total, "items": records})


def read_predictions(model_folder: Path) -> dict[str, Any] | None:
    """The stored {"total", "items"}, or None for a model trained before they were kept."""
    try:
        return json.loads((Path(model_folder) / PREDICTIONS_FILE).read_text())
    except FileNotFoundError:
        return None
