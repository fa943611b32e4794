"""`graft api`: serve the HTTP API, closed by default (an open API only by an explicit opt-out, on loopback)."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from graft.shared.config import Config, get_config
from graft.shared.schema import SchemaOutOfDate


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the Flask app under waitress."""
    from waitress import serve

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
        logging.getLogger(__name__).warning(
            "NO AUTHENTICATION: GRAFT_INSECURE_NO_AUTH is on and no token is set, so anyone who can reach "
            "http://%s:%d can train, predict and delete. For local development only.", args.host, args.port)
    logging.getLogger("waitress").setLevel(logging.INFO)
    # waitress buffers a whole body before the app runs: stop it a little past the app's own (JSON 413) limit.
    body_limit = (config.max_body_mb + 16) * 1024 * 1024
    serve(app, host=args.host, port=args.port, threads=args.threads, max_request_body_size=body_limit)
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
