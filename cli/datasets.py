"""`graft datasets add|show|list|delete`: upload a folder (zipped here) or an archive, and read its report."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from graft.cli.client import Bars
from graft.cli.resources import emit
from graft.client import Client

INSPECT_TIMEOUT_S = 6 * 3600.0  # a worker inspects every image; a busy batch queue may make it wait


def upload(client: Client, path: Path, name: str | None = None) -> dict[str, Any]:
    """Upload a folder (zipped first) or an archive file, wait for a worker's inspection; returns the dataset."""
    bars = Bars()
    started = time.monotonic()
    try:
        dataset = client.add_dataset(path, name, on_progress=bars, wait=False)
    finally:
        bars.close()
    sys.stderr.write(f"uploaded in {time.monotonic() - started:.1f} s; inspecting on a worker ...\n")
    dataset = client.wait_dataset(dataset["id"], timeout=INSPECT_TIMEOUT_S)
    sys.stderr.write(f"inspected: {dataset['status']} ({time.monotonic() - started:.1f} s in all)\n")
    return dataset


def print_report(dataset: dict[str, Any]) -> None:
    """The dataset's classes, issues and conversions, for people."""
    print(f"dataset {dataset['id']}  {dataset['name']!r}: {dataset['num_images']} images in "
          f"{len(dataset['classes'])} classes")
    for name, count in dataset["classes"].items():
        print(f"  {name:<24}{count:>7}")
    for level in ("error", "warning"):
        issues = [i for i in dataset.get("issues", []) if i["level"] == level]
        if issues:
            print(f"{level}s:")
        for issue in issues:
            files = issue.get("files") or []
            shown = f": {', '.join(files[:5])}" + (" ..." if len(files) > 5 else "") if files else ""
            print(f"  [{issue['code']}] {issue['message']}{shown}")
    converted = {k: v for k, v in (dataset.get("conversions") or {}).items() if v}
    if converted:
        print("converted on load: " + ", ".join(f"{k} {v}" for k, v in converted.items()))
    if dataset.get("error"):
        print(f"inspection failed: {dataset['error']}")
    if dataset.get("status") == "failed":
        print("this dataset failed inspection: training on it is refused")
    elif dataset.get("status") == "inspecting":
        print("a worker is still inspecting this dataset")


def run_datasets(client: Client, args: argparse.Namespace) -> int:
    """Dispatch `graft datasets ...`."""
    if args.action == "add":
        dataset = upload(client, Path(args.source), args.name)
        if not emit(args, dataset):
            print_report(dataset)
        return 1 if dataset["has_errors"] else 0
    if args.action == "show":
        dataset = client.dataset(args.dataset_id)
        if not emit(args, dataset):
            print_report(dataset)
        return 0
    if args.action == "delete":
        answer = client.delete_dataset(args.dataset_id)
        if not emit(args, answer):
            print(f"dataset {args.dataset_id} deleted")
        return 0
    items = list(client.datasets())
    if emit(args, items):
        return 0
    for item in items:
        counts = item["issue_counts"]
        print(f"{item['id']}  {item['status']:<10} {item['num_images']:>7} images  {len(item['classes']):>3} classes  "
              f"{counts['error']} errors  {counts['warning']} warnings  {item['name']}")
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:  # noqa: ANN401
    """Register `graft datasets` (common: --url/--token/--json, accepted after every action too)."""
    parser = sub.add_parser("datasets", parents=[common], help="upload a dataset and read its inspection report")
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", parents=[common],
                             help="upload DIR_OR_ARCHIVE (a folder is zipped first) and print its report")
    add.add_argument("source", metavar="DIR_OR_ARCHIVE")
    add.add_argument("--name", help="a name for the dataset (default: the folder or file name)")
    for action in ("show", "delete"):
        actions.add_parser(action, parents=[common], help=f"{action} a dataset").add_argument("dataset_id")
    actions.add_parser("list", parents=[common], help="list datasets, newest first")
    return parser

