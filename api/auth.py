"""Bearer-token check for /api/v1: closed by default, open only with the explicit GRAFT_INSECURE_NO_AUTH opt-out."""
from __future__ import annotations

import hmac

from flask import request

from graft.api.context import config
from graft.api.errors import APIError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="graft"'}


def require_token() -> None:
    """Reject the request with 401 (and a Bearer challenge) unless it carries one of the configured tokens."""
    cfg = config()
    tokens = cfg.api_tokens
    if not tokens:
        if cfg.insecure_no_auth:  # `graft api` allows this on loopback only, and says so loudly
            return
        raise APIError(401, "this server has no credentials configured (GRAFT_API_TOKENS): every request is refused",
                       headers=CHALLENGE)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "missing bearer token: send 'Authorization: Bearer <token>'", headers=CHALLENGE)
    if not any(hmac.compare_digest(token.strip().encode(), t.encode()) for t in tokens):
        raise APIError(401, "invalid token", headers={"WWW-Authenticate": 'Bearer realm="graft", error="invalid_token"'})
