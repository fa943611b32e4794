"""Failed authentications from one client address are counted in Redis and, past GRAFT_AUTH_FAIL_LIMIT, refused
with 429.

Only failing attempts are counted and only they are refused: the token check (api.auth) calls refuse_failure when
a token is missing or wrong, and a request with a valid token never reaches it, so a user is served even while
strangers behind the same address (a TLS proxy, a NAT) are over the limit. Flask-Limiter's storage and its
fixed-window strategy hold the count, shared by every API process. The client address is the request's
remote_addr, which names the client behind GRAFT_TRUSTED_PROXIES proxy hops (werkzeug's ProxyFix, installed by
create_app); with 0 hops X-Forwarded-For is ignored.
"""
from __future__ import annotations

import logging
import math
import time
import weakref

from flask import Flask, current_app, request
from flask_limiter import Limiter
from limits import parse
from werkzeug.middleware.proxy_fix import ProxyFix

from graft.api.errors import APIError
from graft.shared.config import Config

log = logging.getLogger(__name__)

SCOPE = "failed-authentication"
EXTENSION = "graft_auth_limit"


class FailureLimit:
    """The failed-authentication counter of one app: a limit, and Flask-Limiter's strategy over Redis storage."""

    def __init__(self, limiter: Limiter, config: Config) -> None:
        self.limiter, self.item, self.prefix = limiter, parse(config.auth_fail_limit), f"graft-auth:{config.queue}"

    def refuse_failure(self, address: str) -> None:
        """Count one failed authentication from address; raise 429 when it is past the limit (else return)."""
        strategy = self.limiter.limiter
        try:
            allowed = strategy.hit(self.item, self.prefix, SCOPE, address)
            if allowed:
                return
            reset = strategy.get_window_stats(self.item, self.prefix, SCOPE, address).reset_time
        except Exception:  # noqa: BLE001 - Redis down: refuse with 401 as usual rather than fail every request
            log.warning("failed-authentication limit not applied: its storage is unreachable", exc_info=True)
            return
        retry = max(1, math.ceil(reset - time.time()))
        raise APIError(429, "too many failed authentications from this address; try again later",
                       headers={"Retry-After": str(retry)})


def install(app: Flask, config: Config) -> FailureLimit:
    """The failure counter on app (api.auth reads it), and the trusted proxy hops for the client address."""
    if config.trusted_proxies:
        # Only the client address: the scheme, host and prefix of a request are not taken from headers.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.trusted_proxies, x_proto=0, x_host=0, x_port=0,
                                x_prefix=0)
    # No limit is declared on any route: the limiter is only the storage and strategy that refuse_failure uses.
    limiter = Limiter(lambda: request.remote_addr or "unknown", app=app, storage_uri=config.redis_url,
                      strategy="fixed-window", swallow_errors=True)
    pool = getattr(getattr(limiter.storage, "storage", None), "connection_pool", None)
    if pool is not None:
        # An app that is dropped (tests build many) closes its Redis sockets first: otherwise the garbage collector
        # may finalize a socket before the connection that would close it, and warn about an unclosed socket.
        weakref.finalize(app, pool.disconnect)
    app.extensions[EXTENSION] = FailureLimit(limiter, config)
    return app.extensions[EXTENSION]


def refuse_failure() -> None:
    """Count the current request as a failed authentication; 429 once its address is past the limit."""
    limit: FailureLimit | None = current_app.extensions.get(EXTENSION)
    if limit is not None:
        limit.refuse_failure(request.remote_addr or "unknown")
