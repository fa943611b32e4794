"""Disk retention: what `graft gc` and the workers' periodic pass remove, and what they never touch.

Removed: uploads no queued or running job reads once they are older than the upload age; `.staging` folders of
dataset uploads that crashed mid-request; checkpoint folders of finished jobs (unless configured to keep them) and
of jobs that no longer exist; model folders with no database row (an attempt that lost its lease after saving).
Never removed: anything a queued or running job uses, datasets (users delete those), models that have a row.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from graft.shared.config import Config
from graft.shared.lifecycle import FINISHED, QUEUED, RUNNING
from graft.shared.models import Job, TrainedModel
from graft.shared.uploads import forget_upload, uploads_root

log = logging.getLogger(__name__)


@dataclass
class GcReport:
    """What one pass removed (paths relative to the artifacts folder) and the bytes it freed."""

    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    kept_in_use: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready summary."""
        return {"removed": self.removed, "freed_bytes": self.freed_bytes, "kept_in_use": self.kept_in_use}


def _newest_mtime(folder: Path) -> float:
    # A folder being filled (an upload in several parts, a streaming dataset) is as young as its newest file.
    newest = folder.stat().st_mtime
    for path in folder.rglob("*"):
        try:
            newest = max(newest, path.lstat().st_mtime)
        except OSError:
            continue
    return newest


def _size(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def _children(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()) if folder.is_dir() else []


def _remove(report: GcReport, artifacts: Path, folder: Path, why: str, dry_run: bool) -> None:
    size = _size(folder)
    log.info("gc: %s %s (%d bytes): %s", "would remove" if dry_run else "removing", folder, size, why)
    if not dry_run:
        shutil.rmtree(folder, ignore_errors=True)
    report.removed.append(str(folder.relative_to(artifacts)))
    report.freed_bytes += size


def collect(session: Session, config: Config, dry_run: bool = False, now: float | None = None) -> GcReport:
    """One retention pass over the artifacts folder; with dry_run, only report what would go."""
    artifacts, now = Path(config.artifacts_dir), time.time() if now is None else now
    report = GcReport()
    statuses = dict(session.execute(select(Job.id, Job.status)).all())
    active = {job_id for job_id, status in statuses.items() if status in (QUEUED, RUNNING)}
    # Only queued and running jobs can read an upload: their params alone are loaded, not every job's.
    in_use_uploads = {(params or {}).get("upload_id")
                      for params in session.scalars(select(Job.params).where(Job.status.in_((QUEUED, RUNNING))))}

    for folder in _children(uploads_root(artifacts)):
        if folder.name in in_use_uploads:
            report.kept_in_use.append(str(folder.relative_to(artifacts)))
        elif now - _newest_mtime(folder) > config.gc_upload_age_s:
            _remove(report, artifacts, folder, "upload no queued or running job reads", dry_run)
            if not dry_run:
                forget_upload(session, folder.name)

    for folder in _children(Path(config.datasets_dir) / ".staging"):
        if now - _newest_mtime(folder) > config.gc_staging_age_s:
            _remove(report, artifacts, folder, "staging folder of an upload that never finished", dry_run)

    for folder in _children(artifacts / "jobs"):
        status = statuses.get(folder.name)
        if folder.name in active:
            report.kept_in_use.append(str(folder.relative_to(artifacts)))
        elif status is None and now - _newest_mtime(folder) > config.gc_orphan_age_s:
            _remove(report, artifacts, folder, "checkpoints of a job that no longer exists", dry_run)
        elif status in FINISHED and not config.gc_keep_checkpoints:
            _remove(report, artifacts, folder, f"checkpoints of a {status} job", dry_run)

    models = set(session.scalars(select(TrainedModel.id)))
    for folder in _children(artifacts / "models"):
        # A job saves its model, then records the row (retrying through a database outage for up to a lease):
        # the age keeps the pass away from that window.
        if folder.name not in models and now - _newest_mtime(folder) > config.gc_orphan_age_s:
            _remove(report, artifacts, folder, "model folder without a database row", dry_run)
    return report


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the file system holding path (its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def artifacts_disk(config: Config) -> tuple[int, bool]:
    """The artifacts disk's free bytes, and whether that is under GRAFT_MIN_FREE_MB (uploads are then refused)."""
    free = disk_free_bytes(config.artifacts_dir)
    return free, free < config.min_free_mb * 1024 * 1024
