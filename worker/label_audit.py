"""Write a training job's label audit into its dataset's report, as the `suspected_mislabel` warning.

Inspection audits the labels first (worker.core.dataset_audit, on the default job's frozen trunk); a training job
audits them again on its own trunk's cached features (worker.core.trust), and the latest audit replaces the one
before it.
"""
from __future__ import annotations

import logging
from typing import Any

from graft.shared.config import Config
from graft.shared.db import session_scope
from graft.shared.models import DatasetRecord

log = logging.getLogger(__name__)

CODE = "suspected_mislabel"  # the same code as graft.worker.core.audit.CODE (this module stays torch-free)


def record_label_audit(config: Config, dataset_id: str | None, issue: dict[str, Any] | None, job_id: str) -> None:
    """Replace the dataset's suspected_mislabel issue by this one (or drop it when none); never raises."""
    if not dataset_id:
        return
    try:
        with session_scope(config.database_url) as session:
            dataset = session.get(DatasetRecord, dataset_id)
            if dataset is None:
                return
            report = dict(dataset.report or {})
            issues = [i for i in report.get("issues", []) if i.get("code") != CODE]
            report["issues"] = issues + ([issue] if issue else [])
            dataset.report = report  # a new dict: the JSON column sees the change
    except Exception:  # noqa: BLE001 - the model is trained; a report update must not change how the job ended
        log.exception("job %s: could not write the label audit into dataset %s", job_id, dataset_id)
