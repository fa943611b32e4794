"""Per-user quotas: queued + running jobs (429) and stored bytes (507), each with a message that says which limit.

Limits are GRAFT_QUOTA_ACTIVE_JOBS and GRAFT_QUOTA_STORAGE_MB (0: unlimited), or the user's own overrides
(`graft users set NAME --max-jobs N --max-storage-mb N`). Admins without a user row (GRAFT_API_TOKENS, the
opt-out) have no quota. Stored bytes are a user's uploaded datasets and uploads (their unpacked bytes plus
shared.files.ENTRY_BYTES per file and folder) and models (their folder when trained, plus each export built since).
An upload is checked three times, each before anything is stored: its Content-Length before the body is read;
its body as it streams (a chunked body has no Content-Length), cut off with the 507 once it passes what the
caller may still store; and what it unpacks to (every zip member, and the folders their names imply), planned
before one byte is written. Two requests racing past the check may overshoot a limit by one job or one upload.
"""
from __future__ import annotations

from typing import IO, Any

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


def _over_quota(held: Usage, max_mb: int, needs: str) -> APIError:
    return APIError(507, f"storage quota exceeded: you store {held.stored_bytes / MB:.1f} MB of {max_mb} MB "
                         f"and {needs}; delete datasets or models you no longer need",
                    stored_bytes=held.stored_bytes, max_storage_mb=max_mb)


def check_storage_quota(adding: int) -> Usage | None:
    """507 when storing adding more bytes would take the caller past its storage quota."""
    limits = _limits()
    if limits is None or limits[1] == 0:
        return None
    held = usage(db(), principal().user_id)
    if held.stored_bytes + adding > limits[1] * MB:
        raise _over_quota(held, limits[1], f"this needs {adding / MB:.1f} MB more")
    return held


class _QuotaStream:
    """The raw request body, cut off with the storage quota's 507 once more than left bytes are read from it
    (werkzeug's own limit, GRAFT_MAX_UPLOAD_MB, wraps this one)."""

    def __init__(self, raw: IO[bytes], left: int, held: Usage, max_mb: int) -> None:
        self.raw, self.allowed, self.read_bytes, self.held, self.max_mb = raw, left, 0, held, max_mb

    def _count(self, data: bytes) -> bytes:
        self.read_bytes += len(data)
        if self.read_bytes > self.allowed:
            raise _over_quota(self.held, self.max_mb, f"this request's body passed the {self.allowed / MB:.1f} MB "
                                                      "left as it was read")
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Read and count."""
        return self._count(self.raw.read(size))

    def readline(self, size: int | None = -1) -> bytes:
        """Read a line and count it."""
        return self._count(self.raw.readline(size))

    def readinto(self, buffer: Any) -> int:  # noqa: ANN401 - a writable buffer
        """Read into buffer and count (werkzeug prefers this when the stream has it)."""
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - anything else the server's stream offers
        return getattr(self.raw, name)


def refuse_uploads_over_quota() -> None:
    """Before a multipart POST's body is read: 507 when its Content-Length alone passes the caller's storage quota;
    otherwise the body (chunked or not) is read through a counter that answers the same 507 once it passes it."""
    if request.method != "POST" or request.mimetype != "multipart/form-data":
        return
    held = check_storage_quota(request.content_length or 0)
    if held is not None:
        max_mb = _limits()[1]  # type: ignore[index] # held is None without a quota
        left = max_mb * MB - held.stored_bytes
        request.environ["wsgi.input"] = _QuotaStream(request.environ["wsgi.input"], left, held, max_mb)
