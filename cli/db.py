"""`graft db upgrade|current|revision`: the database schema (graft.shared.schema), and the check at server start."""
from __future__ import annotations

import argparse
import sys

from graft.shared.config import Config, get_config


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `db` subcommand and its actions."""
    p = sub.add_parser("db", help="the database schema: upgrade it (before starting a new release), show it")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("upgrade", help="create or upgrade the tables to this release's schema (safe to repeat)")
    actions.add_parser("current", help="print the schema revision the database is at, and whether it is current")
    rev = actions.add_parser("revision", help="(developers) write the next migration from the models' changes")
    rev.add_argument("-m", "--message", required=True, help="what changes, e.g. 'predict chunks table'")
    return p


def run_db(args: argparse.Namespace) -> int:
    """Run one `graft db` action on GRAFT_DATABASE_URL."""
    from graft.shared import schema

    url = get_config().database_url
    if args.action == "current":
        print(schema.describe(url))
        return 0
    if args.action == "revision":
        print(f"wrote {schema.new_revision(args.message)}")
        return 0
    done = schema.upgrade(url)
    if done.stamped:
        print(f"the database had tables from before migrations: stamped at {done.stamped}, upgraded to {done.after}")
    elif done.before == done.after:
        print(f"the database is already at {done.after} (head)")
    else:
        print(f"upgraded the database from {done.before or 'empty'} to {done.after}")
    return 0


def schema_ready(config: Config) -> bool:
    """Before `graft api` or `graft worker` starts: False, with the message, when the schema is not this code's."""
    from graft.shared.schema import SchemaOutOfDate, ensure_schema

    try:
        ensure_schema(config)
    except SchemaOutOfDate as exc:
        print(f"graft: {exc}", file=sys.stderr)
        return False
    return True
