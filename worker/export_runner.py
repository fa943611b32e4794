"""Export runner: build one format's zip for a trained model and cache it next to the model, or record why not.

The API serves the cached zip (shared/exports.py names the files) and sends one task per build
(shared/export_builds.py); a duplicate message still builds nothing twice: a zip already built is not built again,
and the claim on the build's record lets one worker at a time build it. A built zip's size is added to the model's,
so that exports count toward the owner's storage quota.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import redis
from sqlalchemy import update

from graft.shared import export_builds
from graft.shared.config import Config, get_config
from graft.shared.db import session_scope
from graft.shared.exports import export_error, export_zip, exports_dir
from graft.shared.models import TrainedModel
from graft.shared.storage import atomic_write_bytes

log = logging.getLogger(__name__)


def run_export(model_id: str, fmt: str, config: Config | None = None) -> None:
    """Build artifacts/models/<id>/exports/<fmt>.zip unless it exists; on failure write <fmt>.error instead."""
    config = config or get_config()
    dest = export_zip(config.artifacts_dir, model_id, fmt)
    if dest.is_file():
        log.info("model %s: %s export already built", model_id, fmt)
        return
    client = export_builds.connect(config.redis_url)
    try:
        held = export_builds.claim(client, config.queue, model_id, fmt)
        if held is None:
            log.info("model %s: %s export already being built by another worker", model_id, fmt)
            return
    except redis.RedisError:  # a blip: the message came through Redis, so build it, unrecorded
        log.exception("model %s: could not claim the %s export; building it anyway", model_id, fmt)
        held = None
    try:
        _build(model_id, fmt, dest, config)
    finally:
        if held is not None:
            try:
                export_builds.finish(client, held)
            except redis.RedisError:  # the record expires on its own (BUILDING_TTL_S)
                log.exception("model %s: could not release the %s export's record", model_id, fmt)


def _build(model_id: str, fmt: str, dest: Path, config: Config) -> None:
    """Write the zip (its size added to the model's) or the error file."""
    from graft.worker.core.export import write_export  # torch stays out of the worker's main process

    error = export_error(config.artifacts_dir, model_id, fmt)
    with session_scope(config.database_url) as session:
        model = session.get(TrainedModel, model_id)
        if model is None:
            log.info("model %s: gone, nothing to export", model_id)
            return
        artifact, metrics = Path(model.path), dict(model.metrics or {})
    log.info("model %s: building the %s export", model_id, fmt)
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
    size = dest.stat().st_size
    with session_scope(config.database_url) as session:
        counted = session.execute(update(TrainedModel).where(TrainedModel.id == model_id)
                                  .values(size_bytes=TrainedModel.size_bytes + size)).rowcount
    if not counted:  # deleted while it was built: its folder went with it, so leave no export behind
        shutil.rmtree(exports_dir(config.artifacts_dir, model_id), ignore_errors=True)
        log.info("model %s: deleted during its %s export; export removed", model_id, fmt)
        return
    log.info("model %s: %s export written (%d bytes)", model_id, fmt, size)
