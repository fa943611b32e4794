"""`graft api`: serve the HTTP API under gunicorn, closed by default (an open API only by an explicit opt-out, on loopback).

gunicorn's gthread workers hand the request body to the app as a stream: the token and size checks
(`graft.api.admission.admit_body`) run before a byte of an upload is read, so a stranger's upload is refused
without being stored anywhere (waitress, used before, buffered every body to disk first).
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from graft.shared.config import Config, get_config
from graft.shared.schema import SchemaOutOfDate

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)


def serve(app: "Flask", options: dict[str, Any]) -> None:
    """Run gunicorn (imported here: other `graft` commands do not pay for it) on app until it is stopped."""
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        """One Flask app built (and its schema checked) in the master, inherited by each forked worker."""

        def load_config(self) -> None:
            # Only the options given here: no gunicorn.conf.py or GUNICORN_CMD_ARGS picked up from the surroundings.
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> "Flask":
            return app

    Server().run()


def _worker_exit(_server: Any, worker: Any) -> None:  # noqa: ANN401 - gunicorn's arbiter and worker
    # A worker is a fork of the master: finalising the whole interpreter it inherited takes seconds and does nothing
    # the worker needs (every request's session is closed, log lines are written as they come). Only a worker that
    # booted and was told to stop: a failed boot keeps its exit code, which tells the master to give up.
    if worker.booted and not worker.alive:
        logging.shutdown()
        os._exit(0)


def server_options(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    """gunicorn's settings for `graft api`: gthread workers, no control socket, no request-line surprises."""
    host = f"[{args.host}]" if ":" in args.host else args.host
    return {
        "bind": [f"{host}:{args.port}"],
        "worker_class": "gthread",
        "workers": args.workers,
        "threads": args.threads,
        "worker_exit": _worker_exit,
        "proc_name": "graft-api",
        "control_socket_disable": True,  # it would be one path ($HOME/.gunicorn) shared by every server on the host
        "graceful_timeout": 20,  # SIGTERM: requests in flight get this long (the synchronous predict waits up to 30 s)
        "timeout": 60,  # a worker whose main loop stops answering this long is replaced (threads may run longer)
        "limit_request_line": 8190,  # gunicorn's largest: long ids and query strings get the app's JSON 4xx
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
    }


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the Flask app under gunicorn (gthread workers)."""
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
    serve(app, server_options(config, args))
    return 0


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
