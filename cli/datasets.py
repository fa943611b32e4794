"""`graft datasets add|show|list|delete`: upload a folder (zipped here) or an archive, and read its report."""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable

from graft.cli.client import ClientError, GraftClient
from graft.cli.predict import local_files

STORED_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".zip", ".gz", ".heic"})  # compressed already
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
UPLOAD_TIMEOUT_S = 3600.0  # a large archive is checked and extracted before the server answers
INSPECT_TIMEOUT_S = 6 * 3600.0  # a worker inspects every image; a busy batch queue may make it wait


class Bar:
    """A progress bar on stderr: one updating line on a TTY, a line every 10% otherwise."""

    def __init__(self, label: str, total: int, unit: str = "") -> None:
        self.label, self.total, self.unit = label, max(total, 1), unit
        self.done, self._shown = 0, -1

    def advance(self, n: int) -> None:
        """Count n more units done and redraw when the shown figure changes."""
        self.done = min(self.done + n, self.total)
        fraction = self.done / self.total
        step = int(fraction * 100) if sys.stderr.isatty() else int(fraction * 10) * 10
        if step == self._shown:
            return
        self._shown = step
        if self.unit == "MB":
            figures = f"{self.done / 2**20:.2f}/{self.total / 2**20:.2f} MB"
        else:
            figures = f"{self.done}/{self.total} {self.unit}".strip()
        line = f"{self.label} [{'#' * int(fraction * 30):<30}] {fraction * 100:5.1f}%  {figures}"
        if sys.stderr.isatty():
            sys.stderr.write(f"\r{line}\033[K" + ("\n" if self.done >= self.total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def zip_folder(folder: Path, out: Path) -> int:
    """Zip folder's files (hidden files and OS junk left out, like the server does) into out; returns the count."""
    files = local_files(folder)
    if not files:
        raise ClientError(f"no files in {folder}")
    bar = Bar("zipping  ", len(files), "files")
    with zipfile.ZipFile(out, "w", allowZip64=True) as archive:
        for name, path in files:
            method = zipfile.ZIP_STORED if path.suffix.lower() in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            archive.write(path, name, compress_type=method)
            bar.advance(1)
    return len(files)


class MultipartBody:
    """A multipart/form-data body read in blocks (never whole): a 'name' field, then the archive as 'file'."""

    def __init__(self, path: Path, name: str, on_read: Callable[[int], None]) -> None:
        self.boundary = f"graft-{uuid.uuid4().hex}"
        filename = path.name.encode("ascii", "replace").decode().replace('"', "_")
        name = " ".join(name.split())  # no line breaks inside the form field
        head = (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n"
                f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._parts: list[Any] = [io.BytesIO(head), open(path, "rb"), io.BytesIO(tail)]
        self._length = len(head) + path.stat().st_size + len(tail)
        self._on_read, self._position = on_read, 0

    @property
    def content_type(self) -> str:
        """The Content-Type header that goes with this body."""
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        """Bytes read so far (requests asks, to size the body)."""
        return self._position

    def read(self, size: int = -1) -> bytes:
        """The next block of the body (b"" at the end)."""
        size = size if size and size > 0 else 1 << 20
        while self._parts:
            block = self._parts[0].read(size)
            if block:
                self._position += len(block)
                self._on_read(len(block))
                return block
            self._parts.pop(0).close()
        return b""

    def close(self) -> None:
        """Close the archive file."""
        for part in self._parts:
            part.close()
        self._parts = []


def upload(client: GraftClient, path: Path, name: str | None = None) -> dict[str, Any]:
    """Upload a folder (zipped first) or an archive file, wait for a worker's inspection; returns the dataset."""
    path = path.expanduser()
    if not path.exists():
        raise ClientError(f"no such file or folder: {path}")
    with tempfile.TemporaryDirectory(prefix="graft-dataset-") as tmp:
        archive = path
        if path.is_dir():
            archive = Path(tmp) / f"{path.resolve().name or 'dataset'}.zip"
            zip_folder(path, archive)
        elif not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise ClientError(f"{path} is neither a folder nor a .zip/.tar(.gz) archive")
        label = name or (path.resolve().name if path.is_dir() else path.name.split(".")[0])
        bar = Bar("uploading", archive.stat().st_size, "MB")
        body = MultipartBody(archive, label, bar.advance)
        try:
            started = time.monotonic()
            dataset = client.request("POST", "/api/v1/datasets", data=body, timeout=(30, UPLOAD_TIMEOUT_S),
                                     headers={"Content-Type": body.content_type})
        finally:
            body.close()
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


def run_datasets(client: GraftClient, args: argparse.Namespace) -> int:
    """Dispatch `graft datasets ...`."""
    if args.action == "add":
        dataset = upload(client, Path(args.source), args.name)
        print_report(dataset)
        return 1 if dataset["has_errors"] else 0
    if args.action == "show":
        dataset = client.request("GET", f"/api/v1/datasets/{args.dataset_id}")
        print_report(dataset)
        return 0
    if args.action == "delete":
        client.request("DELETE", f"/api/v1/datasets/{args.dataset_id}")
        print(f"dataset {args.dataset_id} deleted")
        return 0
    for item in client.request("GET", "/api/v1/datasets")["items"]:
        counts = item["issue_counts"]
        print(f"{item['id']}  {item['status']:<10} {item['num_images']:>7} images  {len(item['classes']):>3} classes  "
              f"{counts['error']} errors  {counts['warning']} warnings  {item['name']}")
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:  # noqa: ANN401 - argparse's private subparsers type
    """Register `graft datasets`."""
    parser = sub.add_parser("datasets", help="upload a dataset and read its inspection report")
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="upload DIR_OR_ARCHIVE (a folder is zipped first) and print its report")
    add.add_argument("source", metavar="DIR_OR_ARCHIVE")
    add.add_argument("--name", help="a name for the dataset (default: the folder or file name)")
    for action in ("show", "delete"):
        actions.add_parser(action, help=f"{action} a dataset").add_argument("dataset_id")
    actions.add_parser("list", help="list datasets, newest first")
    return parser

