"""`graft`: run the API or a worker, submit and watch jobs, or run the demo."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from cli.client import ClientError, GraftClient, ProgressPrinter
from shared.config import get_config


def _client(args: argparse.Namespace) -> GraftClient:
    config = get_config()
    return GraftClient(args.url or config.url, args.token or config.token)


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the Flask app under waitress."""
    from waitress import serve

    from api import create_app

    logging.getLogger("waitress").setLevel(logging.INFO)
    # waitress buffers a whole body before the app runs: stop it a little past the app's own (JSON 413) limit.
    body_limit = (get_config().max_body_mb + 16) * 1024 * 1024
    serve(create_app(), host=args.host, port=args.port, threads=args.threads, max_request_body_size=body_limit)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Start a Celery worker on the configured queue."""
    from worker import celery_app

    celery_app.TORCH_THREADS["n"] = args.threads
    name = args.name if "@" in args.name else f"{args.name}@%h"
    argv = ["worker", "-n", name, "-c", str(args.concurrency), "-P", args.pool,
            "-Q", get_config().queue, "--loglevel", args.loglevel, "--without-gossip", "--without-mingle"]
    celery_app.app.worker_main(argv)
    return 0


def print_training_summary(job: dict[str, Any], client: GraftClient) -> None:
    """Model id, accuracy, per-class figures and where the files are."""
    if job["status"] != "succeeded":
        print(f"job {job['id']} {job['status']}: {job.get('error') or ''}")
        return
    model = client.model(job["model_id"])
    metrics = model["metrics"]
    print(f"job {job['id']} succeeded")
    print(f"model id:      {model['id']}  ({model['backbone']}, classes: {', '.join(model['classes'])})")
    print(f"val accuracy:  {metrics['val_acc']:.4f} (best epoch {metrics.get('best_epoch')})")
    print(f"{'class':<20}{'precision':>10}{'recall':>10}{'support':>9}")
    for name, row in metrics["per_class"].items():
        print(f"{name:<20}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['support']:>9}")
    skipped = job["metrics"].get("skipped_files") or []
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): " + ", ".join(s["path"] for s in skipped[:5]))
    print(f"model files:   {os.path.dirname(model['path'])}")


def cmd_train(args: argparse.Namespace) -> int:
    """Submit a training job for a server-side folder."""
    client = _client(args)
    if (args.data_dir is None) == (args.dataset is None):
        raise ClientError("give DATA_DIR (a folder on the server) or --dataset ID, not both")
    source = {"data_dir": os.path.abspath(args.data_dir)} if args.data_dir else {"dataset_id": args.dataset}
    params: dict[str, Any] = {**source, "backbone": args.backbone,
                              "pretrained": not args.no_pretrained, "epochs": args.epochs}
    for key in ("batch_size", "learning_rate", "image_size", "val_split", "seed", "mode", "time_budget_s"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
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
    """One line per job, newest first."""
    for job in _client(args).jobs(args.status)["items"]:
        best = (job["metrics"] or {}).get("best_val_acc")
        acc = f"{best:.3f}" if best is not None else "-"
        print(f"{job['id']}  {job['kind']:<7} {job['status']:<9} val_acc={acc:<6} {job['created_at']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify a folder (uploaded, or --server-dir) with a trained model and write CSV or JSON."""
    from cli.predict import run_predict

    return run_predict(_client(args), args)


def cmd_datasets(args: argparse.Namespace) -> int:
    """Upload a dataset, or show, list or delete datasets."""
    from cli.datasets import run_datasets

    return run_datasets(_client(args), args)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole service locally and train once."""
    from cli.demo import run_demo

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
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("train", help="submit a training job for DATA_DIR (a folder on the server) or --dataset ID")
    p.add_argument("data_dir", nargs="?")
    p.add_argument("--dataset", help="an uploaded dataset's id (see `graft datasets add`) instead of DATA_DIR")
    p.add_argument("--backbone", default="resnet18", choices=["resnet18", "efficientnet_lite0"])
    p.add_argument("--no-pretrained", action="store_true", help="train from random weights")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", dest="learning_rate", type=float)
    p.add_argument("--image-size", dest="image_size", type=int)
    p.add_argument("--val-split", dest="val_split", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--mode", choices=["auto", "linear", "finetune", "full"], help="default: auto")
    p.add_argument("--time-budget", dest="time_budget_s", type=float, help="seconds (auto's default: 600)")
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
    p.set_defaults(func=cmd_jobs)

    from cli.predict import add_parser as add_predict_parser

    add_predict_parser(sub).set_defaults(func=cmd_predict)

    from cli.datasets import add_parser as add_datasets_parser

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
    except ClientError as exc:
        print(f"graft: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
