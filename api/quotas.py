"""Per-user quotas: queued + running jobs (429) and stored bytes (507), each with a message that says which limit.

Limits are GRAFT_QUOTA_ACTIVE_JOBS and GRAFT_QUOTA_STORAGE_MB (0: unlimited), or the user's own overrides
(`graft users set NAME --max-jobs N --max-storage-mb N`). Admins without a user row (GRAFT_API_TOKENS, the
opt-out) have no quota. Stored bytes are a user's uploaded datasets (their unpacked size), uploads and models
(their folder when trained; exports are not counted). An upload is checked against its Content-Length before
its body is read, so an over-quota upload is refused before anything is stored; a dataset is checked again on
its unpacked size. Two requests racing past the check may overshoot a limit by one job or one upload.
"""
from __future__ import annotations

from flask import request

from graft.api.context import config, db
from graft.api.errors import APIError
from graft.api.owners import principal
from graft.shared.users import Usage, usage

MB = 1024 * 1024
RETRY_AFTER_S = 30  # a job slot frees when one of the user's jobs ends: worth asking again about this often


def _limits() -> tuple[int, int] | None:
    """The caller's (jobs, storage MB) limits, or None for an admin without a user row."""
    who, cfg = principal(), config()
    if who.user_id is None:
        return None
    return (cfg.quota_active_jobs if who.max_jobs is None else who.max_jobs,
            cfg.quota_storage_mb if who.max_storage_mb is None else who.max_storage_mb)


def check_job_quota() -> None:
    """429 when the caller already has as many queued and running jobs as its quota allows."""
    limits = _limits()
    if limits is None or limits[0] == 0:
        return
    held = usage(db(), principal().user_id).active_jobs
    if held >= limits[0]:
        raise APIError(429, f"job quota reached: you have {held} queued or running job(s) and may have {limits[0]}; "
                            "wait for one to finish (or cancel one) and submit again",
                       headers={"Retry-After": str(RETRY_AFTER_S)}, active_jobs=held, max_jobs=limits[0])


def check_storage_quota(adding: int) -> Usage | None:
    """507 when storing adding more bytes would take the caller past its storage quota."""
    limits = _limits()
    if limits is None or limits[1] == 0:
        return None
    held = usage(db(), principal().user_id)
    if held.stored_bytes + adding > limits[1] * MB:
        raise APIError(507, f"storage quota exceeded: you store {held.stored_bytes / MB:.1f} MB of {limits[1]} MB "
                            f"and this needs {adding / MB:.1f} MB more; delete datasets or models you no longer "
                            "need", stored_bytes=held.stored_bytes, max_storage_mb=limits[1])
    return held


def refuse_uploads_over_quota() -> None:
    """Before a multipart POST's body is read: 507 when its Content-Length alone passes the caller's storage quota."""
    if request.method != "POST" or request.mimetype != "multipart/form-data":
        return
    check_storage_quota(request.content_length or 0)
