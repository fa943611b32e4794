"""What graft.client raises: one base class, a subclass per case a caller handles differently."""
from __future__ import annotations

from typing import Any


class GraftError(Exception):
    """Anything the client could not do; .status and .body are the server's answer when there was one."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:  # noqa: ANN401 - JSON
        super().__init__(message)
        self.message, self.status, self.body = message, status, body

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}" if self.status else self.message


class BadRequest(GraftError):
    """400 or 413: the request was refused as it stands (a wrong field, a file too large)."""


class AuthError(GraftError):
    """401 or 403: a missing or wrong token."""


class NotFound(GraftError):
    """404: no such job, model, dataset or upload."""


class Conflict(GraftError):
    """409: the resource is not in a state that allows this (a finished job, a dataset still inspecting)."""


class QuotaExceeded(GraftError):
    """429 past the user's job quota, or 507 past the storage quota (or a nearly full server disk)."""


class Unavailable(GraftError):
    """The API could not be reached, timed out, or answered 502/503/504, after the client's retries."""


class WaitTimeout(GraftError):
    """wait() or wait_dataset() gave up before the job or dataset finished."""


BY_STATUS: dict[int, type[GraftError]] = {400: BadRequest, 413: BadRequest, 401: AuthError, 403: AuthError,
                                          404: NotFound, 409: Conflict, 429: QuotaExceeded, 502: Unavailable,
                                          503: Unavailable, 504: Unavailable, 507: QuotaExceeded}


def error_for(status: int, body: Any) -> GraftError:  # noqa: ANN401 - JSON or text
    """The exception for an HTTP error answer, keeping the server's JSON "error" message."""
    message = body.get("error", str(body)) if isinstance(body, dict) else str(body)[:300]
    return BY_STATUS.get(status, GraftError)(message, status, body)
