"""Bearer-token check for /api/v1: closed by default, open only with the explicit GRAFT_INSECURE_NO_AUTH opt-out.

A token is a user's (`graft users add`, `graft tokens create`; stored hashed, see graft.shared.users) or one of
GRAFT_API_TOKENS, which act as admin tokens (installs from before users keep working). The caller becomes
g.principal (graft.api.owners), which every view's ownership check reads. Only a failed check is counted against
the client address's failed-authentication limit (graft.api.ratelimit): a valid token is served whatever the count.
"""
from __future__ import annotations

import hmac

from flask import g, request

from graft.api.context import config, db
from graft.api.errors import APIError
from graft.api.owners import LEGACY_ADMIN, NO_AUTH, Principal, principal
from graft.api.ratelimit import refuse_failure
from graft.shared.users import authenticate

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="graft"'}


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_token() -> None:
    """Set g.principal from the bearer token, or reject the request with 401 (and a Bearer challenge)."""
    cfg = config()
    token = _bearer()
    if token is None:
        if cfg.insecure_no_auth and not cfg.api_tokens:  # `graft api` allows this on loopback only, loudly
            g.principal = NO_AUTH
            return
        refuse_failure()  # 429 once this address failed too often; a valid token is never counted nor refused
        raise APIError(401, "missing bearer token: send 'Authorization: Bearer <token>'", headers=CHALLENGE)
    if any(hmac.compare_digest(token.encode("utf-8", "surrogatepass"), t.encode()) for t in cfg.api_tokens):
        g.principal = LEGACY_ADMIN
        return
    user = authenticate(db(), token)
    if user is not None:
        g.principal = Principal(user.id, user.name, user.is_admin, user.max_jobs, user.max_storage_mb)
        return
    if cfg.insecure_no_auth and not cfg.api_tokens:
        g.principal = NO_AUTH  # the opt-out serves everyone; a token it does not know changes nothing
        return
    refuse_failure()
    raise APIError(401, "invalid token", headers={"WWW-Authenticate": 'Bearer realm="graft", error="invalid_token"'})


def require_admin() -> None:
    """403 unless the caller is an admin (after require_token): for what spans every user, such as /metrics."""
    if not principal().admin:
        raise APIError(403, "this needs an admin token (graft users add NAME --admin, or GRAFT_API_TOKENS)")
