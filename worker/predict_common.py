"""What the two halves of a predict job (listing in predict_runner, chunks in predict_chunks) share.

Where the input is, which model file to load, failing the job, removing its upload once it has ended.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from graft.shared import chunks
from graft.shared.config import Config
from graft.shared.db import session_scope
from graft.shared.models import Job, TrainedModel
from graft.shared.storage import resolve_under_roots
from graft.shared.uploads import release_upload, upload_dir

log = logging.getLogger(__name__)


class InputGone(LookupError):
    """The job's input folder or model is no longer there."""


def input_folder(config: Config, params: dict[str, Any]) -> tuple[Path, list[Path]]:
    """The folder to classify and the roots every file must stay inside."""
    if params.get("upload_id"):
        folder = upload_dir(config.artifacts_dir, params["upload_id"])
        if not folder.is_dir():
            raise InputGone(f"upload {params['upload_id']} is gone")
        return folder, [folder.resolve()]
    folder = resolve_under_roots(params["input_dir"], config.data_roots)
    return folder, list(config.data_roots)


def model_path(config: Config, model_id: str) -> str:
    """Where the job's model artifact is (InputGone when the model was deleted)."""
    with session_scope(config.database_url) as session:
        model = session.get(TrainedModel, model_id)
        if model is None:
            raise InputGone(f"model {model_id} no longer exists")
        return model.path


def fail_job(config: Config, job_id: str, error: str) -> None:
    """Mark a running predict job failed (a finished one is left alone) and remove its upload."""
    with session_scope(config.database_url) as session:
        job = session.get(Job, job_id)
        if job is not None:
            chunks.fail_job(session, job, error)
    release_job_upload(config, job_id)


def release_job_upload(config: Config, job_id: str) -> None:
    """Remove a finished job's uploaded images unless an active job still reads them (never raises)."""
    try:
        with session_scope(config.database_url) as session:
            if release_upload(session, config.artifacts_dir, job_id):
                log.info("predict job %s: upload removed", job_id)
    except Exception:  # noqa: BLE001 - cleanup trouble must not change how the job ended
        log.exception("predict job %s: could not remove its upload", job_id)
