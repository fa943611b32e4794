"""`graft api`: serve the HTTP API under Hypercorn, closed by default (an open API only by an explicit opt-out, on loopback).

Hypercorn reads every connection on an asyncio loop, so a client that opens a socket and sends nothing, or half a
request line, holds no thread: it costs a file descriptor until HEADER_DEADLINE_S, when it is closed. Only a request
whose headers are complete reaches the Flask app, which runs in a2wsgi's thread pool (`--threads` per process) and
reads the body as a stream: the token and size checks (`graft.api.admission.admit_body`) run before a byte of an
upload is read, so a stranger's upload is refused without being stored anywhere.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from typing import Any, Callable

from graft.shared.config import Config, get_config
from graft.shared.schema import SchemaOutOfDate

log = logging.getLogger(__name__)

HEADER_DEADLINE_S = 10  # from connect (or the previous answer) to a request's last header line; then it is closed
MAX_HEAD_BYTES = 16 * 1024  # request line and headers together: longer ones get 431 without reaching the app
GRACEFUL_S = 20  # SIGTERM: requests in flight get this long (the synchronous predict waits up to 30 s)
BACKLOG = 1024  # connections the kernel queues while the loop accepts: a burst of idle sockets does not fill it

WSGIApp = Callable[[dict, Callable], Any]


def _chunked_bodies_end(app: WSGIApp) -> WSGIApp:
    """Mark a body without Content-Length (chunked) as ending where the request does, as the server de-chunks it.

    Without the mark werkzeug reads such a body as empty; with a Content-Length it keeps its own length check, which
    is what tells a client that hung up mid-body from a complete one.
    """
    def wsgi(environ: dict, start_response: Callable) -> Any:  # noqa: ANN401 - a WSGI response iterable
        if "CONTENT_LENGTH" not in environ:
            environ["wsgi.input_terminated"] = True
        return app(environ, start_response)
    return wsgi


_DISCARDING: set[asyncio.Task] = set()  # running discards (the loop keeps only weak references to tasks)


async def _discard_until_disconnect(receive: Callable) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _release_unread_bodies(app: Any) -> Any:  # noqa: ANN401 - an ASGI application, wrapped
    """Let the server close a connection whose request body the answer left unread (an early 401, 413 or 507).

    Hypercorn hands a body to the app through a small queue and, once the answer is sent, puts a disconnect
    message on it: with the queue full of body the app never read, that waits forever, and the connection (and
    the server's graceful stop) waits with it. Taking what is queued once the answer's last byte is sent lets the
    disconnect through; Hypercorn then closes the connection rather than read the rest of the body.
    """
    async def asgi(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        ended = False

        async def watched_receive() -> dict:
            nonlocal ended
            message = await receive()
            ended = ended or message["type"] == "http.disconnect" or not message.get("more_body", False)
            return message

        async def watched_send(message: dict) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not ended:
                task = asyncio.get_running_loop().create_task(_discard_until_disconnect(watched_receive))
                _DISCARDING.add(task)
                task.add_done_callback(_DISCARDING.discard)
            await send(message)

        return await app(scope, watched_receive, watched_send)
    return asgi


def asgi_app(threads: int) -> Any:  # noqa: ANN401 - an ASGI application
    """The app as a serving process runs it: Flask in a2wsgi's pool of threads, configured from the environment.

    Hypercorn builds it from its import path (Config.application_path) in each process it spawns, and in its own
    process when there is one worker.
    """
    from a2wsgi import WSGIMiddleware

    from graft.api import create_app

    app = create_app(get_config())
    return _release_unread_bodies(WSGIMiddleware(_chunked_bodies_end(app), workers=threads))


def server_config(args: argparse.Namespace) -> Any:  # noqa: ANN401 - hypercorn.config.Config
    """Hypercorn's settings for `graft api`: the header deadline, bounded heads, spawned worker processes."""
    from hypercorn.config import Config as HypercornConfig

    host = f"[{args.host}]" if ":" in args.host else args.host
    settings = HypercornConfig()
    settings.bind = [f"{host}:{args.port}"]
    settings.workers = 0 if args.workers == 1 else args.workers  # 0: serve in this process, spawning none
    settings.application_path = f"{__name__}:asgi_app({int(args.threads)})"  # built anew in each worker process
    settings.keep_alive_timeout = HEADER_DEADLINE_S  # Hypercorn's idle timer runs until a request's headers are in
    settings.h11_max_incomplete_size = MAX_HEAD_BYTES
    settings.graceful_timeout = GRACEFUL_S
    settings.backlog = BACKLOG
    settings.include_server_header = False
    settings.accesslog = None
    settings.errorlog = logging.getLogger("hypercorn.error")  # through Graft's logging, once
    return settings


def serve(args: argparse.Namespace) -> int:
    """Run Hypercorn (imported here: other `graft` commands do not pay for it) until it is stopped; its exit code."""
    from hypercorn.run import run

    return run(server_config(args))


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the Flask app under Hypercorn: in this process, or with --workers N a master and N spawned processes."""
    from graft.api import create_app

    config = get_config()
    if args.insecure_no_auth:
        config = config.replace(insecure_no_auth=True)
    try:
        app = create_app(config)  # checks the schema (or upgrades it, with GRAFT_DB_AUTO_UPGRADE) once
    except SchemaOutOfDate as exc:
        print(f"graft: {exc}", file=sys.stderr)
        return 1
    refusal = open_api_refusal(config, args.host, users_have_tokens(config))
    if refusal:
        print(f"graft api: {refusal}", file=sys.stderr)
        return 2
    if config.insecure_no_auth and not config.api_tokens:
        log.warning(
            "NO AUTHENTICATION: GRAFT_INSECURE_NO_AUTH is on and no token is set, so anyone who can reach "
            "http://%s:%d can train, predict and delete. For local development only.", args.host, args.port)
    del app  # each serving process builds its own (spawned, not forked): this one only checked the schema
    if config.insecure_no_auth:
        os.environ["GRAFT_INSECURE_NO_AUTH"] = "1"  # the serving processes read their settings from the environment
        get_config.cache_clear()  # this one too, when it serves in-process (--workers 1)
    return serve(args)


def users_have_tokens(config: Config) -> bool:
    """True when some user holds a live token (`graft users add`): a credential the API can start with."""
    from graft.shared.db import session_scope
    from graft.shared.users import has_live_tokens

    with session_scope(config.database_url) as session:
        return has_live_tokens(session)


def open_api_refusal(config: Config, host: str, user_tokens: bool = False) -> str | None:
    """Why `graft api` must not start as configured (no credential, or an open API off loopback), or None."""
    if config.api_tokens or (user_tokens and not config.insecure_no_auth):
        return None
    if not config.insecure_no_auth:
        return ("no credential configured: set GRAFT_API_TOKENS (or GRAFT_API_TOKENS_FILE), or create a user with "
                "`graft users add NAME --admin`. For local development only, --insecure-no-auth "
                "(GRAFT_INSECURE_NO_AUTH=1) serves without one, on a loopback --host")
    try:
        loopback = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return f"--insecure-no-auth serves only on a loopback address (127.0.0.1, ::1, localhost), not on {host!r}"
    return None
