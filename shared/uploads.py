"""Uploaded images for predict jobs: where they live, saving streams under safe names, bounded zip extraction, removal."""
from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from graft.shared.archive import ArchiveLimits, Extracted, extract_zip_stream
from graft.shared.files import COPY_BLOCK, HERE, NameClaims, UploadError, safe_relative
from graft.shared.lifecycle import FINISHED, QUEUED, RUNNING
from graft.shared.models import Job, Upload

UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


def uploads_root(artifacts_dir: Path) -> Path:
    """Folder holding every upload."""
    return Path(artifacts_dir) / "uploads"


def spool_dir(artifacts_dir: Path) -> Path:
    """Where the API spools a request's file parts (unnamed temporary files): on the artifacts disk, the one its
    free-space check watches, so that a large body cannot fill another disk (TMPDIR) unchecked."""
    return Path(artifacts_dir) / "spool"


def upload_dir(artifacts_dir: Path, upload_id: str) -> Path:
    """Folder of one upload; upload_id must be 32 hex digits (never a path)."""
    if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
        raise UploadError(f"not an upload id: {upload_id!r}")
    return uploads_root(artifacts_dir) / upload_id


def save_stream(folder: Path, name: str, stream: BinaryIO, budget: list[int]) -> Path:
    """Copy stream to folder/name (name made safe); budget[0] is the bytes still allowed, reduced here."""
    relative = safe_relative(name)
    target = folder / relative
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = open(target, "wb")  # noqa: SIM115 - closed below
    except (NotADirectoryError, IsADirectoryError, FileExistsError):
        # An earlier request of this upload stored `a` and this one sends `a/b.jpg` (or the other way round).
        raise UploadError(f"{str(relative)!r} clashes with a file or folder already in the upload") from None
    with out:
        while block := stream.read(COPY_BLOCK):
            budget[0] -= len(block)
            if budget[0] < 0:
                raise UploadError("upload exceeds the size limit")
            out.write(block)
    return target


def extract_zip(folder: Path, stream: BinaryIO, budget: list[int], limits: ArchiveLimits,
                claims: NameClaims | None = None) -> Extracted:
    """Extract a zip archive into folder with safe names, the archive limits and a total size budget.

    The checks (no absolute or '..' names, links or device files; member count, size and ratio; the central
    directory read in bounded memory) are shared.archive's, so uploads for prediction and datasets obey the
    same rules.
    """
    return extract_zip_stream(folder, stream, budget, limits, claims)


def remove_upload(folder: Path) -> None:
    """Delete an upload folder and everything in it."""
    shutil.rmtree(folder, ignore_errors=True)


def remove_claimed(folder: Path, claims: NameClaims) -> None:
    """Undo a request that failed while adding to folder: the files it claimed, then the folders left empty."""
    for name in claims.files:
        with contextlib.suppress(OSError):  # never written, or a folder of an earlier request
            (folder / name).unlink()
    for name in sorted(claims.folders - {HERE}, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: it holds files of earlier requests
            (folder / name).rmdir()


def release_upload(session: Session, artifacts_dir: Path, job_id: str) -> bool:
    """Delete the upload folder of predict job job_id once it has finished, unless a queued or running predict job
    still reads it; True when removed. Call after the job's final status is committed.

    Uploads live as long as the jobs that use them: a finished job's results are in the database, not in the folder.
    Its ownership row goes too (the caller commits).
    """
    job = session.get(Job, job_id)
    upload_id = (job.params or {}).get("upload_id") if job is not None else None
    if job is None or job.kind != "predict" or not upload_id or job.status not in FINISHED:
        return False
    active = session.scalars(select(Job.params).where(Job.kind == "predict", Job.status.in_((QUEUED, RUNNING)),
                                                      Job.id != job_id)).all()
    if any((params or {}).get("upload_id") == upload_id for params in active):
        return False
    try:
        folder = upload_dir(artifacts_dir, upload_id)
    except UploadError:
        return False
    if not folder.exists():
        return False
    remove_upload(folder)
    forget_upload(session, upload_id)
    return True


def forget_upload(session: Session, upload_id: str) -> None:
    """Delete an upload's ownership row once its folder is gone (caller commits): it no longer counts to a quota."""
    session.execute(delete(Upload).where(Upload.id == upload_id))
