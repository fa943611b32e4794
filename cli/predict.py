"""`graft predict MODEL_ID DIR`: upload a folder (or name a server folder), run a predict job, write CSV or JSON."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from graft.cli.client import Bars, ClientError, ProgressPrinter
from graft.client import Client, Upload
from graft.shared.params import UNKNOWN


def upload_folder(client: Client, root: Path, recursive: bool) -> Upload:
    """Upload root's files in parts, showing a bar; returns the upload (id, files sent, unreadable files)."""
    bars = Bars(uploading=("files", False))
    try:
        return client.upload_images(root, recursive, on_progress=lambda sent, total: bars("uploading", sent, total))
    finally:
        bars.close()


def write_results(client: Client, job: dict[str, Any], output: Path) -> None:
    """CSV (streamed from the server) or, for a .json name, every result row as one JSON document."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.part")
    with open(tmp, "wb") as out:
        if output.suffix.lower() == ".json":
            doc = {"job_id": job["id"], "model_id": job["params"]["model_id"],
                   "summary": (job.get("metrics") or {}).get("summary", {}), "items": list(client.results(job["id"]))}
            out.write(json.dumps(doc, indent=1, ensure_ascii=False).encode())
        else:
            client.results_csv(job["id"], out)
    os.replace(tmp, output)


def print_summary(job: dict[str, Any], output: Path, unreadable: list[str]) -> None:
    """Files classified out of those read, then counts per label, `unknown` and errors, each once."""
    summary = (job.get("metrics") or {}).get("summary") or {}
    files, errors = summary.get("files", 0), summary.get("errors", 0)
    print(f"job {job['id']}: {files - errors} of {files} files classified -> {output}")
    for label, count in (summary.get("labels") or {}).items():
        if label != UNKNOWN:  # the summary's labels count `unknown` too; it has its own line below
            print(f"  {label:<24}{count:>8}")
    print(f"  {UNKNOWN:<24}{summary.get('unknown', 0):>8}  (unlike the training images, or below the threshold)")
    print(f"  {'errors':<24}{errors:>8}  (unreadable: see the error column)")
    if summary.get("ignored"):
        print(f"  hidden or system files ignored: {summary['ignored']}")
    for line in unreadable:
        print(f"  not uploaded (unreadable here): {line}")


def run_predict(client: Client, args: argparse.Namespace) -> int:
    """The `graft predict` command."""
    if bool(args.dir) == bool(args.server_dir):
        raise ClientError("give either DIR (a folder here, uploaded) or --server-dir PATH (a folder on the server)")
    params: dict[str, Any] = {"model_id": args.model_id, "top_k": args.top_k, "recursive": not args.no_recursive}
    if args.threshold is not None:
        params["threshold"] = args.threshold
    if args.target_precision is not None:
        params["target_precision"] = args.target_precision
    if args.keep_ood:
        params["reject_ood"] = False
    if args.chunk_size:
        params["chunk_size"] = args.chunk_size
    if args.precision:
        params["precision"] = args.precision
    if args.tta:
        params["tta"] = True
    if args.runtime:
        params["runtime"] = args.runtime
    unreadable: list[str] = []
    if args.server_dir:
        params["input_dir"] = os.path.abspath(args.server_dir)
    else:
        root = Path(args.dir)
        if not root.is_dir():
            raise ClientError(f"not a folder: {root}")
        client.model(args.model_id)  # fail fast on a wrong id, before uploading anything
        upload = upload_folder(client, root, params["recursive"])
        params["upload_id"], unreadable = upload.id, upload.unreadable
    job = client.predict(**params)
    job = client.wait(job["id"], ProgressPrinter(), interval=args.interval)
    if job["status"] != "succeeded":
        print(f"job {job['id']} {job['status']}: {job.get('error') or ''}", file=sys.stderr)
        return 1
    output = Path(args.output)
    write_results(client, job, output)
    if args.json:
        print(json.dumps({**job, "output": str(output.resolve()), "unreadable": unreadable}, indent=2))
    else:
        print_summary(job, output, unreadable)
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:  # noqa: ANN401
    """Register the `predict` subcommand on an argparse subparsers object (common: --url/--token/--json)."""
    p = sub.add_parser("predict", parents=[common],
                       help="classify every image in DIR with a trained model (CSV or JSON out)")
    p.add_argument("model_id")
    p.add_argument("dir", nargs="?", help="a folder on this machine (its images are uploaded)")
    p.add_argument("-o", "--output", default="predictions.csv", help="results file: .csv or .json")
    p.add_argument("--top-k", dest="top_k", type=int, default=1, help="also list the k best labels")
    p.add_argument("--threshold", type=float, help="top confidence below this gives the label 'unknown'")
    p.add_argument("--target-precision", dest="target_precision", type=float,
                   help="per class, 'unknown' below the confidence that reached this precision in validation")
    p.add_argument("--keep-ood", dest="keep_ood", action="store_true",
                   help="keep the label of images unlike the training images (their ood_score is still reported)")
    p.add_argument("--tta", action="store_true", help="average each image's and its mirror image's probabilities")
    p.add_argument("--server-dir", dest="server_dir", help="classify this folder on the server instead of DIR")
    p.add_argument("--no-recursive", dest="no_recursive", action="store_true", help="ignore subfolders")
    p.add_argument("--chunk-size", dest="chunk_size", type=int, help="files per worker task")
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="bf16: about twice as fast on CPUs with native bf16; labels may differ on near-ties")
    p.add_argument("--runtime", choices=["openvino", "torch"],
                   help="fp32 inference runtime on the workers (default: openvino; torch is the plain fallback)")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    return p
