"""`graft jobs list|show|wait|cancel|logs` and `graft models list|show|download|delete`: a resource, a verb."""
from __future__ import annotations

import argparse
import json
from itertools import islice
from pathlib import Path
from typing import Any

from graft.cli.client import Bars, ProgressPrinter
from graft.cli.summary import print_training_summary
from graft.client import Client
from graft.shared.accuracy import describe
from graft.shared.exports import EXPORT_FORMATS


def emit(args: argparse.Namespace, resource: Any) -> bool:  # noqa: ANN401 - any JSON
    """Print resource as JSON when --json was given; True when it was (the caller then prints no text)."""
    if getattr(args, "json", False):
        print(json.dumps(resource, indent=2))
        return True
    return False


def job_line(job: dict[str, Any]) -> str:
    """One job as a line of the list."""
    return f"{job['id']}  {job['kind']:<7} {job['status']:<9} accuracy={_short(job.get('accuracy')):<7} {job['created_at']}"


def _short(accuracy: dict[str, Any] | None) -> str:
    """The model's one accuracy as a list column ('86.7%'), '-' for none."""
    return "-" if not accuracy else f"{100 * accuracy['value']:.1f}%"


def print_job(job: dict[str, Any]) -> None:
    """One job for people: status, progress, model and error."""
    print(job_line(job))
    progress = job.get("progress") or {}
    if progress.get("fraction") is not None:
        print(f"  progress:  {float(progress['fraction']) * 100:.1f}%")
    if job.get("model_id"):
        print(f"  model:     {job['model_id']}")
    if job.get("error"):
        print(f"  error:     {job['error']}")


def run_jobs(client: Client, args: argparse.Namespace) -> int:
    """Dispatch `graft jobs ...` (no action lists)."""
    action = getattr(args, "action", None) or "list"
    if action == "list":
        jobs = list(islice(client.jobs(args.status, args.kind, tries=args.tries), args.limit))
        if not emit(args, jobs):
            for job in jobs:
                print(job_line(job))
        return 0
    if action == "show":
        job = client.job(args.job_id)
        if not emit(args, job):
            print_job(job)
        return 0
    if action == "cancel":
        job = client.cancel(args.job_id)
        if not emit(args, job):
            state = "cancelled" if job["status"] == "cancelled" else "cancel requested (stops at the next batch)"
            print(f"job {job['id']}: {state}")
        return 0
    if action == "logs":
        job = client.job(args.job_id)
        events, lines = client.events(args.job_id), list(client.logs(args.job_id))
        if not emit(args, {"job": job, "events": events, "lines": lines}):
            # One timeline: state changes and the workers' own lines, by time.
            timeline = [(e["at"], f"{e['from'] or '-':>9} -> {e['to']:<9} {e['message'] or ''}") for e in events]
            timeline += [(line["at"], f"{line['level']:<9} {line['message']}") for line in lines]
            for at, text in sorted(timeline, key=lambda item: item[0]):
                print(f"{at}  {text}")
            if job.get("error"):
                print(f"error: {job['error']}")
        return 0
    return wait_for(client, args, args.job_id)


def wait_for(client: Client, args: argparse.Namespace, job_id: str) -> int:
    """Show a job's progress until it ends; its summary (or JSON) then; 0 when it succeeded, else 1."""
    job = client.wait(job_id, ProgressPrinter(), interval=getattr(args, "interval", 1.0))
    if not emit(args, job):
        if job["kind"] == "train":
            print_training_summary(job, client)
        else:
            print(f"job {job['id']} {job['status']}" + (f": {job['error']}" if job.get("error") else ""))
    return 0 if job["status"] == "succeeded" else 1


def print_model(model: dict[str, Any]) -> None:
    """One model for people: backbone, classes, accuracy and per-class figures."""
    metrics = model.get("metrics") or {}
    print(f"model {model['id']}  {model['name']}")
    source = f", dataset {model['dataset_id']}" if model.get("dataset_id") else ""
    print(f"  trained by:    job {model['job_id']}{source}, {model['backbone']}, {model['image_size']} px")
    print(f"  classes:       {', '.join(model['classes'])}")
    if model.get("accuracy"):
        print(f"  accuracy:      {describe(model['accuracy'])}")
    for name, row in (metrics.get("per_class") or {}).items():
        print(f"  {name:<20}precision {row['precision']:.3f}  recall {row['recall']:.3f}  support {row['support']}")


def run_models(client: Client, args: argparse.Namespace) -> int:
    """Dispatch `graft models ...` (no action lists)."""
    action = getattr(args, "action", None) or "list"
    if action == "list":
        models = list(islice(client.models(args.job), args.limit))
        if not emit(args, models):
            for model in models:
                print(f"{model['id']}  {model['name'][:40]:<40} accuracy={_short(model.get('accuracy')):<7} "
                      f"{len(model['classes']):>3} classes  {model['created_at']}")
        return 0
    if action == "show":
        model = client.model(args.model_id)
        if not emit(args, model):
            print_model(model)
        return 0
    if action == "delete":
        answer = client.delete_model(args.model_id)
        if not emit(args, answer):
            print(f"model {args.model_id} deleted")
        return 0
    out = Path(args.output or f"{args.model_id}-{args.format}.zip")
    bars = Bars()
    try:
        saved = client.download_model(args.model_id, args.format, out, timeout=args.wait,
                                      on_progress=lambda done, total: bars("downloading", done, total))
    finally:
        bars.close()
    if not emit(args, {"model_id": args.model_id, "format": args.format, "path": str(saved.resolve())}):
        print(f"model {args.model_id} ({args.format}) saved to {saved}")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:  # noqa: ANN401 - argparse's subparsers
    """Register `graft jobs` and `graft models`; common carries --url/--token/--json for every level."""
    jobs = sub.add_parser("jobs", parents=[common], help="list, show, wait for, cancel jobs, or read their events")
    jobs.add_argument("--status", help="only jobs in this status")
    jobs.add_argument("--kind", choices=["train", "predict"], help="only jobs of this kind")
    jobs.add_argument("--limit", type=int, default=20, help="show at most this many jobs (default: 20)")
    jobs.add_argument("--tries", action="store_true", help="only a model's synchronous tries, which are left out "
                                                           "otherwise (graft models predict, Try an image)")
    actions = jobs.add_subparsers(dest="action", metavar="{list,show,wait,cancel,logs}")
    listing = actions.add_parser("list", parents=[common], help="list jobs, newest first (the default)")
    # SUPPRESS: `graft jobs --status x list` keeps the value given before the action
    listing.add_argument("--status", default=argparse.SUPPRESS, help="only jobs in this status")
    listing.add_argument("--kind", choices=["train", "predict"], default=argparse.SUPPRESS, help="only this kind")
    listing.add_argument("--limit", type=int, default=argparse.SUPPRESS, help="at most this many (default: 20)")
    listing.add_argument("--tries", action="store_true", default=argparse.SUPPRESS, help="only synchronous tries")
    for action, text in (("show", "show a job"), ("cancel", "cancel a job (a running one stops at its next batch)"),
                         ("wait", "show a job's progress until it ends (exit 1 unless it succeeded)"),
                         ("logs", "a job's state changes and the lines its workers logged (epochs, warnings, errors)")):
        actions.add_parser(action, parents=[common], help=text).add_argument("job_id")

    models = sub.add_parser("models", parents=[common], help="list, show, download or delete trained models")
    models.add_argument("--job", help="only the model of this job")
    models.add_argument("--limit", type=int, default=20, help="show at most this many models (default: 20)")
    actions = models.add_subparsers(dest="action", metavar="{list,show,download,delete}")
    listing = actions.add_parser("list", parents=[common], help="list models, newest first (the default)")
    listing.add_argument("--job", default=argparse.SUPPRESS, help="only the model of this job")
    listing.add_argument("--limit", type=int, default=argparse.SUPPRESS, help="at most this many (default: 20)")
    actions.add_parser("show", parents=[common], help="a model's classes and accuracy").add_argument("model_id")
    actions.add_parser("delete", parents=[common], help="delete a model and its files (refused while a predict "
                       "job uses it)").add_argument("model_id")
    download = actions.add_parser("download", parents=[common], help="save a model as a zip (a worker builds it)")
    download.add_argument("model_id")
    download.add_argument("--format", default="onnx", choices=EXPORT_FORMATS, help="(default: onnx)")
    download.add_argument("-o", "--output", help="the zip to write (default: MODEL_ID-FORMAT.zip)")
    download.add_argument("--wait", type=float, default=600, metavar="SECONDS",
                          help="how long to wait for a worker to build it (default: 600)")
