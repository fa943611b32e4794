"""`graft`: run the API or a worker, submit and watch jobs, or run the demo."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from itertools import islice
from typing import Any

from graft.cli.client import ClientError, ProgressPrinter
from graft.cli.summary import print_training_summary
from graft.client import Client, GraftError
from graft.shared.config import get_config
from graft.shared.params import TRAIN_PARAMS, Param
from graft.shared.queue import QUEUE_KINDS, queue_name


def _client(args: argparse.Namespace) -> Client:
    config = get_config()
    return Client(args.url or config.url, args.token or config.token)


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the Flask app under waitress."""
    from waitress import serve

    from graft.api import create_app

    logging.getLogger("waitress").setLevel(logging.INFO)
    # waitress buffers a whole body before the app runs: stop it a little past the app's own (JSON 413) limit.
    body_limit = (get_config().max_body_mb + 16) * 1024 * 1024
    serve(create_app(), host=args.host, port=args.port, threads=args.threads, max_request_body_size=body_limit)
    return 0


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


def train_request(args: argparse.Namespace) -> dict[str, Any]:
    """The training job's body from parsed `train` options: the data source and every option given."""
    if (args.data_dir is None) == (args.dataset is None):
        raise ClientError("give DATA_DIR (a folder on the server) or --dataset ID, not both")
    source = {"data_dir": os.path.abspath(args.data_dir)} if args.data_dir else {"dataset_id": args.dataset}
    options = {p.name: getattr(args, p.name) for p in TRAIN_PARAMS if p.cli and getattr(args, p.name) is not None}
    return {**source, **options}


def cmd_train(args: argparse.Namespace) -> int:
    """Submit a training job for a server-side folder."""
    params = train_request(args)
    client = _client(args)
    job = client.train(**params)
    print(f"submitted job {job['id']}")
    if args.wait:
        job = client.wait(job["id"], ProgressPrinter())
        print_training_summary(job, client)
        return 0 if job["status"] == "succeeded" else 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print one job as JSON."""
    print(json.dumps(_client(args).job(args.job_id), indent=2))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a job (a running one stops at its next batch)."""
    job = _client(args).cancel(args.job_id)
    state = "cancelled" if job["status"] == "cancelled" else "cancel requested (stops at the next batch)"
    print(f"job {job['id']}: {state}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """One line per job, newest first (the newest --limit of them)."""
    for job in islice(_client(args).jobs(args.status), args.limit):
        best = (job["metrics"] or {}).get("best_val_acc")
        acc = f"{best:.3f}" if best is not None else "-"
        print(f"{job['id']}  {job['kind']:<7} {job['status']:<9} val_acc={acc:<6} {job['created_at']}")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="graft", description=__doc__)
    parser.add_argument("--url", help="API base URL (default: $GRAFT_URL or http://127.0.0.1:8000)")
    parser.add_argument("--token", help="API token (default: $GRAFT_TOKEN)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("api", help="serve the HTTP API (waitress)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=8)
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

    p = sub.add_parser("train", help="submit a training job for DATA_DIR (a folder on the server) or --dataset ID")
    p.add_argument("data_dir", nargs="?")
    p.add_argument("--dataset", help="an uploaded dataset's id (see `graft datasets add`) instead of DATA_DIR")
    for param in TRAIN_PARAMS:  # generated from graft.shared.params, as the API's schema and TrainSpec are
        if param.cli:
            add_param_option(p, param)
    p.add_argument("--wait", action="store_true", help="show progress until the job ends")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("status", help="show a job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("jobs", help="list jobs")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=20, help="show at most this many jobs (default: 20)")
    p.set_defaults(func=cmd_jobs)

    from graft.cli.predict import add_parser as add_predict_parser

    add_predict_parser(sub).set_defaults(func=cmd_predict)

    from graft.cli.datasets import add_parser as add_datasets_parser

    add_datasets_parser(sub).set_defaults(func=cmd_datasets)

    p = sub.add_parser("demo", help="start Redis (if needed), the API and a worker, and train once")
    p.add_argument("data", nargs="?", help="a folder with one subfolder per class (default: a generated set)")
    p.add_argument("--epochs", type=int, default=4)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `graft` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GraftError as exc:  # the API's answer or a usage error (ClientError): a message, not a traceback
        print(f"graft: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
