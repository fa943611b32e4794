"""`graft gc`: the retention pass, run by hand on a server (workers also run it every GRAFT_GC_INTERVAL_SECONDS)."""
from __future__ import annotations

import argparse
import json
import sys

from graft.shared.config import get_config


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove (or with --dry-run, list) the leftovers the retention rules name; print what went and what it freed."""
    from graft.shared.db import session_scope
    from graft.shared.retention import collect

    config = get_config()
    with session_scope(config.database_url) as session:
        report = collect(session, config, dry_run=args.dry_run)
    if args.json:
        json.dump({**report.as_dict(), "dry_run": args.dry_run}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for path in report.removed:
        print(f"{verb} {path}")
    print(f"{verb} {len(report.removed)} folder(s), {report.freed_bytes / 1e6:.1f} MB; "
          f"{len(report.kept_in_use)} in use by queued or running jobs kept")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `graft gc` (a server-side command: it reads GRAFT_DATABASE_URL and GRAFT_ARTIFACTS_DIR)."""
    p = sub.add_parser("gc", help="remove leftovers from the artifacts folder (server side; see docs/operations.md)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_gc)
    return p
