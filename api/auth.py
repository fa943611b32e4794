"""Bearer-token check for /api/v1 when GRAFT_API_TOKENS is set."""
from __future__ import annotations

import hmac

from flask import request

from graft.api.context import config
from graft.api.errors import APIError


def require_token() -> None:
    """Reject the request with 401 unless it carries one of the configured tokens."""
    tokens = config().api_tokens
    if not tokens:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    if not any(hmac.compare_digest(token.strip().encode(), t.encode()) for t in tokens):
        raise APIError(401, "invalid token")
