"""`graft`: run the API or a worker; train, predict, and manage jobs, models and datasets; or run the demo."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from graft.cli.client import ClientError
from graft.cli.db import add_parser as add_db_parser
from graft.cli.db import run_db, schema_ready
from graft.cli.resources import add_parsers as add_resource_parsers
from graft.cli.resources import emit, run_jobs, run_models, wait_for
from graft.cli.serve import cmd_api
from graft.client import AuthError, BadRequest, Client, Conflict, GraftError, NotFound, Unavailable
from graft.shared.config import ConfigError, get_config
from graft.shared.logs import configure_logging
from graft.shared.params import TRAIN_PARAMS, Param
from graft.shared.queue import QUEUE_KINDS, queue_name


def _client(args: argparse.Namespace) -> Client:
    config = get_config()
    return Client(args.url or config.url, args.token or config.token)


def worker_queues(kinds: str) -> list[str]:
    """The Redis queues for a comma-separated list of kinds (train, batch, interactive; "all" for every one)."""
    chosen = [k.strip() for k in kinds.split(",") if k.strip()]
    if chosen in ([], ["all"]):
        chosen = list(QUEUE_KINDS)
    unknown = [k for k in chosen if k not in QUEUE_KINDS]
    if unknown:
        raise ClientError(f"unknown queue kind(s) {', '.join(unknown)}; choose from all, {', '.join(QUEUE_KINDS)}")
    return [queue_name(get_config(), kind) for kind in chosen]


def cmd_worker(args: argparse.Namespace) -> int:
    """Start a Celery worker on the chosen queues (all of them by default)."""
    queues = worker_queues(args.queues)
    if not schema_ready(get_config()):
        return 1
    from graft.worker import celery_app

    celery_app.TORCH_THREADS["n"] = args.threads
    name = args.name if "@" in args.name else f"{args.name}@%h"
    argv = ["worker", "-n", name, "-c", str(args.concurrency), "-P", args.pool,
            "-Q", ",".join(queues), "--loglevel", args.loglevel, "--without-gossip", "--without-mingle"]
    celery_app.app.worker_main(argv)
    return 0


def add_param_option(parser: argparse.ArgumentParser, param: Param) -> None:
    """An option for param; it defaults to None so that an option not given leaves the server's default."""
    if param.type is bool:
        # --no-NAME for a true default, --NAME otherwise: the flag says the value it sets.
        value = not param.option.startswith("--no-")
        help_text = f"set {param.name} to {str(value).lower()} (default: {str(param.default).lower()}): {param.help}"
        parser.add_argument(param.option, dest=param.name, action="store_true" if value else "store_false",
                            default=None, help=help_text.replace("%", "%%"))  # argparse %-formats help
        return
    default = "" if param.default is None else f" (default: {param.default})"
    parser.add_argument(param.option, dest=param.name, type=param.type, choices=param.choices,
                        help=f"{param.help}{default}".replace("%", "%%"))


def check_source(args: argparse.Namespace) -> None:
    """`graft train` needs exactly one data source: DIR, --server-dir PATH or --dataset ID."""
    if sum(1 for s in (args.data_dir, args.server_dir, args.dataset) if s) != 1:
        raise ClientError("give one of DIR (a folder here, uploaded), --server-dir PATH or --dataset ID")


def train_request(args: argparse.Namespace, dataset_id: str | None = None) -> dict[str, Any]:
    """The training job's body from parsed `train` options: the data source and every option given.

    DIR has been uploaded by then: dataset_id is the dataset it became.
    """
    check_source(args)
    if args.server_dir:
        source = {"data_dir": os.path.abspath(args.server_dir)}
    elif args.dataset or dataset_id:
        source = {"dataset_id": args.dataset or dataset_id}
    else:
        raise ClientError(f"{args.data_dir} must be uploaded first (graft datasets add), or give --server-dir")
    options = {p.name: getattr(args, p.name) for p in TRAIN_PARAMS if p.cli and getattr(args, p.name) is not None}
    return {**source, **options}


def cmd_train(args: argparse.Namespace) -> int:
    """Submit a training job: a local folder is uploaded as a dataset first."""
    check_source(args)
    client = _client(args)
    dataset_id = None
    if args.data_dir:
        from graft.cli.datasets import print_report, upload

        if not os.path.isdir(args.data_dir):
            raise ClientError(f"not a folder: {args.data_dir} (a folder on the server is --server-dir PATH)")
        dataset = upload(client, Path(args.data_dir))
        if dataset["status"] != "ready":
            print_report(dataset)
            return 1
        dataset_id = dataset["id"]
    job = client.train(**train_request(args, dataset_id))
    if args.wait:
        print(f"submitted job {job['id']}", file=sys.stderr if args.json else sys.stdout)
        return wait_for(client, args, job["id"])
    if not emit(args, job):
        print(f"submitted job {job['id']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """`graft status ID`: the job as JSON, as before `graft jobs show`."""
    args.json, args.action = True, "show"
    return run_jobs(_client(args), args)


def cmd_cancel(args: argparse.Namespace) -> int:
    """`graft cancel ID`: `graft jobs cancel ID`."""
    args.action = "cancel"
    return run_jobs(_client(args), args)


def cmd_jobs(args: argparse.Namespace) -> int:
    """`graft jobs ...`."""
    return run_jobs(_client(args), args)


def cmd_models(args: argparse.Namespace) -> int:
    """`graft models ...`."""
    return run_models(_client(args), args)


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify a folder (uploaded, or --server-dir) with a trained model and write CSV or JSON."""
    from graft.cli.predict import run_predict

    return run_predict(_client(args), args)


def cmd_datasets(args: argparse.Namespace) -> int:
    """Upload a dataset, or show, list or delete datasets."""
    from graft.cli.datasets import run_datasets

    return run_datasets(_client(args), args)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole service locally and train once."""
    from graft.cli.demo import run_demo

    return run_demo(args.data, epochs=args.epochs)


EXIT_CODES = """exit codes:
  0   success
  1   the job failed or was cancelled (--wait, jobs wait, predict); a server error; a wait that timed out
  2   usage error: wrong arguments, or a request the API refused as it stands (HTTP 400, 401, 403, 409, 413)
  3   not found: no such job, model or dataset (HTTP 404)
  69  the API is unreachable (connection refused, DNS, time-out, HTTP 502/503/504 after retries)

--url, --token and --json may come before or after the subcommand."""


def global_options(suppress: bool) -> argparse.ArgumentParser:
    """--url/--token/--json; the copies on subcommands SUPPRESS their defaults so a value given earlier stays."""
    common = argparse.ArgumentParser(add_help=False)
    default = {"default": argparse.SUPPRESS} if suppress else {}
    common.add_argument("--url", help="API base URL (default: $GRAFT_URL or http://127.0.0.1:8000)", **default)
    common.add_argument("--token", help="API token (default: $GRAFT_TOKEN)", **default)
    common.add_argument("--json", action="store_true", help="print the resource(s) as JSON instead of text",
                        **default)
    return common


def _version() -> str:
    try:
        return version("graft")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="graft", description=__doc__, parents=[global_options(False)],
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"graft {_version()}")
    common = global_options(True)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("api", help="serve the HTTP API (Hypercorn; the app in a pool of threads per process)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each runs --threads requests at once; idle connections hold no thread)")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="serve with no token at all (local development, loopback --host only; loudly logged)")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="start a Celery worker")
    p.add_argument("--name", default="graft", help="Celery node name (NAME or NAME@HOST)")
    p.add_argument("--concurrency", type=int, default=1, help="jobs run at once on this machine")
    p.add_argument("--pool", default="prefork", choices=["prefork", "solo"])
    p.add_argument("--threads", type=int, default=0, help="torch threads per job (0: cores / concurrency)")
    p.add_argument("--queues", default="all", metavar="KINDS",
                   help="comma-separated kinds of work to take: train, batch, interactive (default: all)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    add_db_parser(sub).set_defaults(func=run_db)

    p = sub.add_parser("train", parents=[common], help="train on DIR (a folder here, uploaded first), "
                       "--server-dir PATH or --dataset ID")
    p.add_argument("data_dir", nargs="?", metavar="DIR", help="a folder on this machine: zipped and uploaded")
    p.add_argument("--server-dir", dest="server_dir", metavar="PATH", help="a folder on the server instead of DIR")
    p.add_argument("--dataset", help="an uploaded dataset's id (see `graft datasets add`) instead of DIR")
    for param in TRAIN_PARAMS:  # generated from graft.shared.params, as the API's schema and TrainSpec are
        if param.cli:
            add_param_option(p, param)
    p.add_argument("--wait", action="store_true", help="show progress until the job ends (exit 1 unless it succeeded)")
    p.set_defaults(func=cmd_train)

    from graft.cli.predict import add_parser as add_predict_parser

    add_predict_parser(sub, common).set_defaults(func=cmd_predict)
    add_resource_parsers(sub, common)
    sub.choices["jobs"].set_defaults(func=cmd_jobs)
    sub.choices["models"].set_defaults(func=cmd_models)

    from graft.cli.datasets import add_parser as add_datasets_parser

    add_datasets_parser(sub, common).set_defaults(func=cmd_datasets)

    p = sub.add_parser("status", parents=[common], help="show a job as JSON (= graft jobs show --json)")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", parents=[common], help="cancel a job (= graft jobs cancel)")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)

    from graft.cli.gc import add_parser as add_gc_parser
    from graft.cli.users import add_parsers as add_user_parsers

    add_gc_parser(sub)
    add_user_parsers(sub)

    p = sub.add_parser("demo", help="start Redis (if needed), the API and a worker, and train once")
    p.add_argument("data", nargs="?", help="a folder with one subfolder per class (default: a generated set)")
    p.add_argument("--epochs", type=int, default=4)
    p.set_defaults(func=cmd_demo)
    return parser


def exit_code(exc: GraftError) -> int:
    """The exit status for a client error (the table in EXIT_CODES)."""
    if isinstance(exc, NotFound):
        return 3
    if isinstance(exc, Unavailable):
        return 69  # EX_UNAVAILABLE (sysexits.h)
    if isinstance(exc, (ClientError, BadRequest, AuthError, Conflict)):
        return 2
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `graft` console script."""
    try:
        configure_logging(get_config())
    except ConfigError as exc:  # a bad GRAFT_* variable: say which, before anything else runs
        print(f"graft: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    if args.func not in (cmd_api, cmd_worker, cmd_demo):
        # A command a person runs and reads: its own output, then warnings and errors only (no alembic progress, no
        # urllib3 retry notices before the one message that says the API cannot be reached).
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("urllib3").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except GraftError as exc:  # the API's answer or a usage error (ClientError): a message, not a traceback
        print(f"graft: {exc}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
