"""`graft users add|list|set`, `graft tokens create|list|revoke` and `graft webhook-secrets create|list|revoke`:
admin commands on the server's database.

Like `graft db` and `graft gc`, they talk to GRAFT_DATABASE_URL directly, not to the API: whoever runs them can
already read the database, so they need no token. A new token or webhook secret is printed once, as the last line
of the output; only a token's hash, or a secret's seed, is kept. Webhook secrets are made here, like tokens, rather
than by an API endpoint: both are credentials the operator hands to a user, and a stolen API token then cannot
replace its user's webhook secret.
"""
from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from graft.cli.client import ClientError
from graft.shared.config import get_config


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "never"


def _limit(value: int | None) -> str:
    return "default" if value is None else ("unlimited" if value == 0 else str(value))


def _override(value: int | None) -> int | None:
    """A quota option: None or negative follows the server-wide setting."""
    return None if value is None or value < 0 else value


def _session() -> Any:  # noqa: ANN401 - a context manager yielding a Session
    from graft.shared.db import session_scope
    from graft.shared.schema import SchemaOutOfDate, check_schema

    url = get_config().database_url
    try:
        check_schema(url)
    except SchemaOutOfDate as exc:
        raise ClientError(str(exc)) from None
    return session_scope(url)


def run_users(args: argparse.Namespace) -> int:
    """One `graft users` action."""
    from graft.shared import users

    try:
        with _session() as session:
            if args.action == "add":
                user = users.add_user(session, args.name, args.admin, _override(args.max_jobs),
                                      _override(args.max_storage_mb))
                row, token = users.create_token(session, user)
                kind = "admin" if user.is_admin else "user"
                print(f"created {kind} {user.name} with token {users.public_id(row)}; keep the token, it is shown "
                      "only now:")
                print(token)
            elif args.action == "set":
                user = users.get_user(session, args.name)
                for name in ("max_jobs", "max_storage_mb"):
                    value = getattr(args, name)
                    if value is not None:
                        setattr(user, name, _override(value))
                if args.admin is not None:
                    user.is_admin = args.admin
                print(f"{user.name}: admin={str(user.is_admin).lower()} max_jobs={_limit(user.max_jobs)} "
                      f"max_storage_mb={_limit(user.max_storage_mb)}")
            else:
                print(f"{'NAME':24} {'ADMIN':5} {'TOKENS':6} {'MAX_JOBS':9} {'MAX_STORAGE_MB':14} CREATED")
                for user, live in users.list_users(session):
                    print(f"{user.name:24} {'yes' if user.is_admin else 'no':5} {live:<6} {_limit(user.max_jobs):9} "
                          f"{_limit(user.max_storage_mb):14} {_when(user.created_at)}")
    except users.UserError as exc:
        raise ClientError(str(exc)) from None
    return 0


def run_tokens(args: argparse.Namespace) -> int:
    """One `graft tokens` action."""
    from graft.shared import users

    try:
        with _session() as session:
            if args.action == "create":
                row, token = users.create_token(session, users.get_user(session, args.name))
                print(f"created token {users.public_id(row)} for {args.name}; keep it, it is shown only now:")
                print(token)
            elif args.action == "revoke":
                for given in args.tokens:
                    row = users.revoke(session, given)
                    print(f"revoked {users.public_id(row)}")
            else:
                print(f"{'TOKEN':17} {'USER':24} {'CREATED':19} {'LAST USED':19} REVOKED")
                for row, name in users.list_tokens(session, args.name):
                    print(f"{users.public_id(row):17} {name:24} {_when(row.created_at):19} "
                          f"{_when(row.last_used_at):19} {_when(row.revoked_at) if row.revoked_at else '-'}")
    except users.UserError as exc:
        raise ClientError(str(exc)) from None
    return 0


def run_webhook_secrets(args: argparse.Namespace) -> int:
    """One `graft webhook-secrets` action."""
    from graft.shared import users, webhook_secrets

    try:
        with _session() as session:
            if args.action == "create":
                row, secret = webhook_secrets.create_secret(session, users.get_user(session, args.name),
                                                            get_config().webhook_keys)
                print(f"created webhook secret {webhook_secrets.public_id(row)} for {args.name}: it signs that user's "
                      "callbacks from now on (X-Graft-Key-Id names it); keep it, it is shown only now:")
                print(secret)
            elif args.action == "revoke":
                for given in args.secrets:
                    row = webhook_secrets.revoke_secret(session, given)
                    print(f"revoked {webhook_secrets.public_id(row)}")
            else:
                print(f"{'SECRET':16} {'USER':24} {'CREATED':19} REVOKED")
                for row, name in webhook_secrets.list_secrets(session, args.name):
                    print(f"{webhook_secrets.public_id(row):16} {name:24} {_when(row.created_at):19} "
                          f"{_when(row.revoked_at) if row.revoked_at else '-'}")
    except users.UserError as exc:
        raise ClientError(str(exc)) from None
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `graft users`, `graft tokens` and `graft webhook-secrets` (server side: GRAFT_DATABASE_URL)."""
    p = sub.add_parser("users", help="(server side) add, list or change the users who hold API tokens")
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a user and print its first token (the last line of the output)")
    add.add_argument("name", help="1-64 letters, digits and . _ @ -")
    add.add_argument("--admin", action="store_true", help="sees and acts on every user's jobs, models, datasets")
    setting = actions.add_parser("set", help="change a user's role or quotas")
    setting.add_argument("name")
    setting.add_argument("--admin", dest="admin", action="store_true", default=None, help="make an admin")
    setting.add_argument("--no-admin", dest="admin", action="store_false", help="make an ordinary user")
    for action in (add, setting):
        action.add_argument("--max-jobs", type=int, metavar="N",
                            help="queued + running jobs allowed (0: unlimited; -1: back to GRAFT_QUOTA_ACTIVE_JOBS)")
        action.add_argument("--max-storage-mb", type=int, metavar="MB",
                            help="stored datasets, uploads and models (0: unlimited; -1: back to "
                                 "GRAFT_QUOTA_STORAGE_MB)")
    actions.add_parser("list", help="every user with its role, live tokens and quotas")
    p.set_defaults(func=run_users)

    p = sub.add_parser("tokens", help="(server side) create, list or revoke a user's API tokens")
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="print a new token for user NAME (the last line of the output)")
    create.add_argument("name")
    listing = actions.add_parser("list", help="tokens by their public id, with last use and revocation")
    listing.add_argument("name", nargs="?", help="only this user's")
    revoke = actions.add_parser("revoke", help="revoke tokens, named by public id (gft_xxxxxxxxxxxx) or in full")
    revoke.add_argument("tokens", nargs="+", metavar="TOKEN")
    p.set_defaults(func=run_tokens)

    p = sub.add_parser("webhook-secrets", help="(server side) create, list or revoke the secrets that sign a user's "
                                               "job callbacks")
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="print a new webhook secret for user NAME (the last line of the "
                                               "output); at most two live at once, to rotate")
    create.add_argument("name")
    listing = actions.add_parser("list", help="webhook secrets by their public id, with revocation")
    listing.add_argument("name", nargs="?", help="only this user's")
    revoke = actions.add_parser("revoke", help="revoke webhook secrets, named by public id (whk_xxxxxxxxxxxx)")
    revoke.add_argument("secrets", nargs="+", metavar="SECRET_ID")
    p.set_defaults(func=run_webhook_secrets)

