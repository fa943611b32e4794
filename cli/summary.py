"""What the CLI prints when a training job ends: model id, accuracy, per-class figures, how to download it."""
from __future__ import annotations

from typing import Any

from graft.client import Client
from graft.shared.accuracy import describe
from graft.shared.exports import EXPORT_FORMATS


def print_training_summary(job: dict[str, Any], client: Client) -> None:
    """Model id, accuracy, per-class figures and how to download the model."""
    if job["status"] != "succeeded":
        print(f"job {job['id']} {job['status']}: {job.get('error') or ''}")
        return
    model = client.model(job["model_id"])
    metrics = model["metrics"]
    print(f"job {job['id']} succeeded")
    print(f"model id:      {model['id']}  ({model['backbone']}, classes: {', '.join(model['classes'])})")
    print(f"accuracy:      {describe(model.get('accuracy'))}")
    print(f"{'class':<20}{'precision':>10}{'recall':>10}{'support':>9}")
    for name, row in metrics["per_class"].items():
        print(f"{name:<20}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['support']:>9}")
    skipped = job["metrics"].get("skipped_files") or []
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): " + ", ".join(s["path"] for s in skipped[:5]))
    formats = "|".join(EXPORT_FORMATS)
    print(f"download with: graft models download {model['id']} --format onnx -o model.zip  (format: {formats})")
