"""Dataset inspection runner: load the dataset's record, run the pure inspection and the label audit, record ready
or failed."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from graft.shared.config import Config, get_config
from graft.shared.datasets import report_status
from graft.shared.db import session_scope
from graft.shared.models import DATASET_FAILED, INSPECTING, DatasetRecord
from graft.shared.thumbs import dataset_thumbs_dir

log = logging.getLogger(__name__)


def run_inspection(dataset_id: str, config: Config | None = None) -> None:
    """Inspect dataset_id once; a dataset already inspected (a redelivered message) or deleted is left alone."""
    from graft.worker.core.dataset import DatasetError
    from graft.worker.core.inspection import inspect_dataset
    from graft.worker.core.thumbnails import write_class_thumbnails

    config = config or get_config()
    with session_scope(config.database_url) as session:
        dataset = session.get(DatasetRecord, dataset_id)
        if dataset is None or dataset.status != INSPECTING:
            log.info("dataset %s: %s, nothing to inspect", dataset_id, dataset.status if dataset else "gone")
            return
        root, non_utf8 = Path(dataset.path), (dataset.report or {}).get("non_utf8", [])
    # Only the dataset's own folder: a symlink in it that leads anywhere else (another user's dataset) is not read.
    roots = (root.resolve(),)
    error = None
    try:
        report = inspect_dataset(root, config.max_image_pixels, non_utf8=non_utf8, roots=roots)
        # a few thumbnails per class for the dashboard, where the images are read anyway (bounded: PER_CLASS_THUMBS)
        report["thumbnails"] = write_class_thumbnails(root, dataset_thumbs_dir(config.artifacts_dir, dataset_id),
                                                      config.max_image_pixels, roots=roots)
        _audit_labels(config, dataset_id, root, report, roots)
    except DatasetError as exc:
        report, error = {"issues": []}, str(exc)
    except Exception as exc:  # noqa: BLE001 - any crash must end the inspection with a readable reason
        log.exception("dataset %s: inspection crashed", dataset_id)
        report, error = {"issues": []}, f"inspection crashed: {type(exc).__name__}: {exc}"
    with session_scope(config.database_url) as session:
        dataset = session.get(DatasetRecord, dataset_id)
        if dataset is None or dataset.status != INSPECTING:
            return  # deleted (or inspected by a duplicate delivery) meanwhile
        if error is None:
            dataset.status, dataset.has_errors = report_status(report)
            dataset.classes, dataset.num_images = report["classes"], report["num_images"]
        else:
            dataset.status, dataset.has_errors, dataset.error = DATASET_FAILED, True, error
        dataset.report = report
        log.info("dataset %s: %s, %d images, %d issues", dataset_id, dataset.status, dataset.num_images,
                 len(report["issues"]))


def _audit_labels(config: Config, dataset_id: str, root: Path, report: dict[str, Any],
                  roots: tuple[Path, ...]) -> None:
    """Add the label audit's suspected_mislabel warning to report; the audit is advice: its failure is only logged."""
    from graft.worker.core.audit import mislabel_issue
    from graft.worker.core.dataset_audit import audit_dataset
    from graft.worker.core.pipeline import Caching

    if len(report["classes"]) < 2 or min(report["classes"].values()) < 2:
        return  # nothing to audit: the report already says why no model can be trained
    try:
        result = audit_dataset(root, Caching.on_disk(config.worker_cache_dir, config.cache_mb),
                               config.max_image_pixels, roots)
    except Exception:  # noqa: BLE001 - a dataset that cannot be audited is still inspected
        log.exception("dataset %s: label audit failed; the report is kept without it", dataset_id)
        return
    issue = mislabel_issue(result.audit)
    if issue is not None:
        report["issues"].append(issue)
    log.info("dataset %s: label audit on %s, %d suspects (%d views computed, %d reused from the cache)", dataset_id,
             result.backbone, issue["count"] if issue else 0, result.views_computed, result.views_reused)
