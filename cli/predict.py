"""`graft predict MODEL_ID DIR`: upload a folder (or name a server folder), run a predict job, write CSV or JSON."""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

from graft.cli.client import ClientError, GraftClient, ProgressPrinter
from graft.shared.files import is_junk_name

PART_FILES = 200  # files per upload request (the server parses at most 1000 form parts)
PART_BYTES = 64 * 1024 * 1024


def local_files(root: Path, recursive: bool = True) -> list[tuple[str, Path]]:
    """(relative posix path, path) for every file below root, skipping hidden files and OS litter like the server."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_junk_name(d)) if recursive else []
        found += [((Path(folder) / n).relative_to(root).as_posix(), Path(folder) / n) for n in names if not is_junk_name(n)]
    return sorted(found)


def upload_parts(files: list[tuple[str, Path]]) -> Iterator[list[tuple[str, Path]]]:
    """Group files into upload requests of at most PART_FILES files and about PART_BYTES bytes."""
    part: list[tuple[str, Path]] = []
    size = 0
    for name, path in files:
        try:
            length = path.stat().st_size
        except OSError:
            length = 0
        if part and (len(part) >= PART_FILES or size + length > PART_BYTES):
            yield part
            part, size = [], 0
        part.append((name, path))
        size += length
    if part:
        yield part


def upload_folder(client: GraftClient, root: Path, recursive: bool) -> tuple[str, int, list[str]]:
    """Upload root's files in parts; returns (upload id, files sent, local files that could not be read)."""
    files = local_files(root, recursive)
    if not files:
        raise ClientError(f"no files to classify in {root}")
    upload_id: str | None = None
    sent, unreadable = 0, []
    for part in upload_parts(files):
        with ExitStack() as stack:
            handles = []
            for name, path in part:
                try:
                    handles.append((name, stack.enter_context(open(path, "rb"))))
                except OSError as exc:
                    unreadable.append(f"{name}: {exc.strerror or exc}")
            if not handles:
                continue
            answer = client.upload(handles, upload_id)
        upload_id = upload_id or answer["id"]
        sent += len(handles)
        _status(f"uploading {sent}/{len(files)} files")
    if upload_id is None:
        raise ClientError(f"none of the files in {root} could be read")
    _status(f"uploaded {sent} files\n")
    return upload_id, sent, unreadable


def _status(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{text}\033[K")
    elif text.endswith("\n"):
        sys.stderr.write(text)
    sys.stderr.flush()


def write_results(client: GraftClient, job: dict[str, Any], output: Path) -> None:
    """CSV (streamed from the server) or, for a .json name, every result page as one JSON document."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.part")
    with open(tmp, "wb") as out:
        if output.suffix.lower() == ".json":
            items, after = [], None
            while True:
                page = client.results(job["id"], after)
                items += page["items"]
                if not page["next"] or not page["items"]:
                    break
                after = page["items"][-1]["path"]
            doc = {"job_id": job["id"], "model_id": job["params"]["model_id"], "summary": page["summary"],
                   "items": items}
            out.write(json.dumps(doc, indent=1, ensure_ascii=False).encode())
        else:
            client.results_csv(job["id"], out)
    os.replace(tmp, output)


def print_summary(job: dict[str, Any], output: Path, unreadable: list[str]) -> None:
    """Counts per label, unknowns and errors."""
    summary = (job.get("metrics") or {}).get("summary") or {}
    print(f"job {job['id']}: {summary.get('files', 0)} files classified -> {output}")
    for label, count in (summary.get("labels") or {}).items():
        print(f"  {label:<24}{count:>8}")
    print(f"  {'(unknown)':<24}{summary.get('unknown', 0):>8}")
    print(f"  {'(errors)':<24}{summary.get('errors', 0):>8}")
    if summary.get("ignored"):
        print(f"  hidden or system files ignored: {summary['ignored']}")
    for line in unreadable:
        print(f"  not uploaded (unreadable here): {line}")


def run_predict(client: GraftClient, args: argparse.Namespace) -> int:
    """The `graft predict` command."""
    if bool(args.dir) == bool(args.server_dir):
        raise ClientError("give either DIR (a folder here, uploaded) or --server-dir PATH (a folder on the server)")
    params: dict[str, Any] = {"model_id": args.model_id, "top_k": args.top_k, "recursive": not args.no_recursive}
    if args.threshold is not None:
        params["threshold"] = args.threshold
    if args.chunk_size:
        params["chunk_size"] = args.chunk_size
    if args.precision:
        params["precision"] = args.precision
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
        params["upload_id"], _, unreadable = upload_folder(client, root, params["recursive"])
    job = client.predict(**params)
    job = client.wait(job["id"], ProgressPrinter(), interval=args.interval)
    if job["status"] != "succeeded":
        print(f"job {job['id']} {job['status']}: {job.get('error') or ''}", file=sys.stderr)
        return 1
    output = Path(args.output)
    write_results(client, job, output)
    print_summary(job, output, unreadable)
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the `predict` subcommand on an argparse subparsers object."""
    p = sub.add_parser("predict", help="classify every image in DIR with a trained model (CSV or JSON out)")
    p.add_argument("model_id")
    p.add_argument("dir", nargs="?", help="a folder on this machine (its images are uploaded)")
    p.add_argument("-o", "--output", default="predictions.csv", help="results file: .csv or .json")
    p.add_argument("--top-k", dest="top_k", type=int, default=1, help="also list the k best labels")
    p.add_argument("--threshold", type=float, help="top confidence below this gives the label 'unknown'")
    p.add_argument("--server-dir", dest="server_dir", help="classify this folder on the server instead of DIR")
    p.add_argument("--no-recursive", dest="no_recursive", action="store_true", help="ignore subfolders")
    p.add_argument("--chunk-size", dest="chunk_size", type=int, help="files per worker task")
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="bf16: about twice as fast on CPUs with native bf16; labels may differ on near-ties")
    p.add_argument("--runtime", choices=["openvino", "torch"],
                   help="fp32 inference runtime on the workers (default: openvino; torch is the plain fallback)")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    return p
