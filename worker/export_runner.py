"""Export runner: build one format's zip for a trained model and cache it next to the model, or record why not.

The API serves the cached zip (shared/exports.py names the files); duplicate requests are harmless: a zip already
built is not built again, and two builds racing each write a complete zip with os.replace, the last one winning.
"""
from __future__ import annotations

import logging
from pathlib import Path

from graft.shared.config import Config, get_config
from graft.shared.db import session_scope
from graft.shared.exports import export_error, export_zip
from graft.shared.models import TrainedModel
from graft.shared.storage import atomic_write_bytes

log = logging.getLogger(__name__)


def run_export(model_id: str, fmt: str, config: Config | None = None) -> None:
    """Build artifacts/models/<id>/exports/<fmt>.zip unless it exists; on failure write <fmt>.error instead."""
    from graft.worker.core.export import write_export  # torch stays out of the worker's main process

    config = config or get_config()
    dest, error = export_zip(config.artifacts_dir, model_id, fmt), export_error(config.artifacts_dir, model_id, fmt)
    if dest.is_file():
        log.info("model %s: %s export already built", model_id, fmt)
        return
    with session_scope(config.database_url) as session:
        model = session.get(TrainedModel, model_id)
        if model is None:
            log.info("model %s: gone, nothing to export", model_id)
            return
        artifact, metrics = Path(model.path), dict(model.metrics or {})
    try:
        write_export(artifact, fmt, dest, metrics=metrics, model_id=model_id)
    except Exception as exc:  # noqa: BLE001 - any failure must reach the waiting client as a readable reason
        log.exception("model %s: %s export failed", model_id, fmt)
        # The reason reaches API clients: no server paths in it.
        reason = f"{type(exc).__name__}: {exc}".replace(str(artifact), "<model>").replace(
            str(config.artifacts_dir), "<artifacts>")
        atomic_write_bytes(error, reason.encode())
        return
    error.unlink(missing_ok=True)
    log.info("model %s: %s export written (%d bytes)", model_id, fmt, dest.stat().st_size)
