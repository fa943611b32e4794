"""The one gate every /api/v1 request passes before its body is touched: who asks, then what the body may cost.

`graft api` (Hypercorn, the app in a2wsgi's threads) hands the body to the app as a stream, so what runs here
runs before a byte of an upload is read or stored: a stranger's 1 GB upload is answered 401 at once, an
over-size one 413 from its Content-Length alone. Checks that decide whether a body may be stored (credentials,
size, the caller's storage quota, free disk) go in admit_body, in that order, and nowhere else.
"""
from __future__ import annotations

from flask import Response, request

from graft.api.auth import require_token
from graft.api.context import config
from graft.api.disk import refuse_uploads_when_disk_is_nearly_full
from graft.api.errors import APIError
from graft.api.quotas import refuse_uploads_over_quota

MB = 1024 * 1024
JSON_BODY_MAX = MB  # a request body that is not an upload (JSON, a url-encoded form) is read into memory: keep it small
UPLOAD = "multipart/form-data"


def body_limit() -> int:
    """The most bytes this request's body may hold: GRAFT_MAX_UPLOAD_MB for an upload, JSON_BODY_MAX otherwise."""
    return config().max_body_mb * MB if request.mimetype == UPLOAD else JSON_BODY_MAX


def admit_body() -> None:
    """Refuse the request before its body is read: 401 without a valid token, 413 for an upload whose
    Content-Length passes the limit, 507 when it passes the caller's storage quota or the disk is nearly full.

    Any body, chunked or not, is cut off at body_limit() as a view reads it (werkzeug's 413), and an upload's
    also at what the caller may still store (the quota's 507, api.quotas); a view that never reads its body (a
    GET, a cancel, a predict on a model the caller cannot see) never pays for it: the server buffers a few chunks
    of it at most, then closes the connection.
    """
    require_token()
    limit = body_limit()
    request.max_content_length = limit  # Flask reads it per request; werkzeug stops the stream there
    if request.mimetype == UPLOAD and request.content_length is not None and request.content_length > limit:
        raise APIError(413, f"request body too large: {request.content_length} bytes, the limit is {limit} bytes "
                            "(GRAFT_MAX_UPLOAD_MB)", limit_bytes=limit)
    refuse_uploads_over_quota()
    refuse_uploads_when_disk_is_nearly_full()


def close_after_refusal(response: Response) -> Response:
    """Ask the server to close a connection whose request body a refusal left unread (Connection: close).

    Otherwise the server waits for the rest of that body before the next request, holding the connection (and
    delaying its own graceful stop) for as long as the client keeps it open; a client that is answered early
    reconnects.
    """
    has_body = request.content_length or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if response.status_code >= 400 and has_body:
        response.headers["Connection"] = "close"
    return response
