"""Failed authentications from one address are counted in Redis and, past GRAFT_AUTH_FAIL_LIMIT, refused with 429.

Flask-Limiter with its Redis storage: the count is shared by every API process, and only answers that were 401
are counted, so a client that authenticates is never slowed by its own traffic. Once over the limit, every request
from that address gets 429 until the window ends (a guessing client learns nothing more, valid token or not).
"""
from __future__ import annotations

import weakref

from flask import Flask, Response
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from graft.shared.config import Config

SCOPE = "failed-authentication"


def _was_refused(response: Response) -> bool:
    return response.status_code == 401


def install(app: Flask, config: Config) -> Limiter:
    """A limiter on app; decorate each guarded blueprint with guard(limiter, config)."""
    limiter = Limiter(
        get_remote_address, app=app, storage_uri=config.redis_url, key_prefix=f"graft-auth:{config.queue}",
        strategy="fixed-window", headers_enabled=True,
        swallow_errors=True,  # Redis down: serve without the limit (auth still applies) rather than fail every request
    )
    pool = getattr(getattr(limiter.storage, "storage", None), "connection_pool", None)
    if pool is not None:
        # An app that is dropped (tests build many) closes its Redis sockets first: otherwise the garbage collector
        # may finalize a socket before the connection that would close it, and warn about an unclosed socket.
        weakref.finalize(app, pool.disconnect)
    return limiter


def guard(limiter: Limiter, config: Config):  # noqa: ANN201 - flask-limiter's decorator for a blueprint
    """The shared failed-authentication limit, to apply to every blueprint behind the token check."""
    return limiter.shared_limit(config.auth_fail_limit, scope=SCOPE, deduct_when=_was_refused,
                                error_message="too many failed authentications from this address; try again later")
