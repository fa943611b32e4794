"""Client: one typed method per Graft API endpoint, iterators over paged lists, waiting, uploads."""
from __future__ import annotations

import logging
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from graft.client.errors import GraftError, Unavailable, WaitTimeout
from graft.client.files import (ARCHIVE_SUFFIXES, MultipartBody, UploadProgress, local_files, upload_parts,
                                zip_folder)
from graft.client.transport import JSON, Transport

log = logging.getLogger(__name__)

FINISHED = ("succeeded", "failed", "cancelled")
UPLOAD_TIMEOUT_S = 3600.0  # a large archive is checked and extracted before the server answers
API = "/api/v1"


@dataclass
class Upload:
    """A folder sent in parts to POST /uploads: its id, how many files went, and local files that could not be read."""

    id: str
    files: int
    unreadable: list[str] = field(default_factory=list)


class Client:
    """The Graft API at url, with an optional bearer token: Client("http://127.0.0.1:8000", "token")."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, retries: int = 4,
                 backoff: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self.http = Transport(self.url, token, timeout, retries, backoff)

    def close(self) -> None:
        """Close the pooled connections."""
        self.http.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        """Any endpoint by path (e.g. "/api/v1/jobs"), with requests' keyword arguments; returns its JSON."""
        return self.http.json(method, path, **kwargs)

    # --- service ------------------------------------------------------------------------------------------------
    def health(self) -> JSON:
        """GET /healthz: {"status": "ok"|"degraded", "database": bool, "redis": bool} (a 503 answer is returned)."""
        return self.http.json("GET", "/healthz", ok=(503,))

    # --- jobs ---------------------------------------------------------------------------------------------------
    def train(self, data_dir: str | None = None, *, dataset_id: str | None = None, **params: Any) -> JSON:
        """Submit a training job on a server folder (data_dir) or an uploaded dataset; returns the queued job."""
        source = {"data_dir": data_dir} if data_dir is not None else {}
        if dataset_id is not None:
            source["dataset_id"] = dataset_id
        return self.http.json("POST", f"{API}/jobs/train", json={**source, **params})

    def job(self, job_id: str) -> JSON:
        """One job."""
        return self.http.json("GET", f"{API}/jobs/{job_id}")

    def jobs(self, status: str | None = None, kind: str | None = None, page_size: int = 20,
             tries: bool = False) -> Iterator[JSON]:
        """Every job, newest first, optionally filtered; pages of page_size are fetched as the iterator goes.
        A model's synchronous tries (Client.predict_now) are left out, or are all there is with tries=True."""
        return self.http.pages(f"{API}/jobs", {"status": status, "kind": kind, "limit": page_size,
                                               "interactive": "true" if tries else None})

    def cancel(self, job_id: str) -> JSON:
        """Cancel a job: a queued one at once, a running one at its next batch (Conflict when finished)."""
        return self.http.json("POST", f"{API}/jobs/{job_id}/cancel")

    def events(self, job_id: str) -> list[JSON]:
        """A job's recorded state transitions, oldest first."""
        return self.http.json("GET", f"{API}/jobs/{job_id}/events")["items"]

    def logs(self, job_id: str, after: int = 0) -> Iterator[JSON]:
        """The lines a job's workers logged, oldest first, from line id after on ({"id", "at", "level", "message"})."""
        return self.http.pages(f"{API}/jobs/{job_id}/logs", {"after": after or None})

    def wait(self, job_id: str, on_progress: Callable[[JSON], None] | None = None, interval: float = 1.0,
             timeout: float | None = None) -> JSON:
        """Poll a job until it has finished and return it; on_progress gets every poll's job."""
        return self._poll(lambda: self.job(job_id), lambda job: job["status"] in FINISHED, on_progress, interval,
                          timeout, f"job {job_id}")

    # --- models -------------------------------------------------------------------------------------------------
    def models(self, job_id: str | None = None, page_size: int = 20) -> Iterator[JSON]:
        """Every model, newest first (optionally those of one job)."""
        return self.http.pages(f"{API}/models", {"job_id": job_id, "limit": page_size})

    def model(self, model_id: str) -> JSON:
        """One model: classes, image size, metrics with the confusion matrix and per-class figures."""
        return self.http.json("GET", f"{API}/models/{model_id}")

    def delete_model(self, model_id: str) -> JSON:
        """Delete a model and its files (Conflict while a queued or running predict job uses it)."""
        return self.http.json("DELETE", f"{API}/models/{model_id}")

    def download_model(self, model_id: str, fmt: str, out: str | Path, timeout: float | None = 600.0,
                       on_progress: Callable[[int, int], None] | None = None) -> Path:
        """Save the model as a zip in fmt (onnx, torchscript, openvino, pt) to out; waits while a worker builds it.

        The server answers 202 until the zip is built (once, by a worker on the batch queue); this polls it every
        Retry-After seconds for up to timeout seconds (None: no bound), then raises WaitTimeout. A failed build
        raises GraftError with the worker's reason; too many of the user's exports building at once, QuotaExceeded.
        """
        out = Path(out)
        deadline = None if timeout is None else time.monotonic() + timeout
        state = "queued"
        while True:
            with self.http.send("GET", f"{API}/models/{model_id}/download", params={"format": fmt},
                                stream=True) as answer:
                if answer.status_code == 200:
                    total, done = int(answer.headers.get("Content-Length") or 0), 0
                    tmp = out.with_name(f".{out.name}.part")
                    with open(tmp, "wb") as handle:
                        for block in answer.iter_content(1 << 20):
                            handle.write(block)
                            done += len(block)
                            if on_progress:
                                on_progress(done, total)
                    tmp.replace(out)
                    return out
                pause = float(answer.headers.get("Retry-After") or 5)  # 202: queued or building
                body = answer.json() if "json" in answer.headers.get("Content-Type", "") else {}
                state = body.get("status", state) if isinstance(body, dict) else state
            if deadline is not None and time.monotonic() + pause > deadline:
                raise WaitTimeout(f"model {model_id}'s {fmt} export is still {state} after {timeout} s; the build "
                                  "goes on: download it again later")
            time.sleep(pause)

    # --- prediction ---------------------------------------------------------------------------------------------
    def upload_images(self, folder: str | Path, recursive: bool = True,
                      on_progress: Callable[[int, int], None] | None = None) -> Upload:
        """Send a folder's files to POST /uploads in parts; on_progress(files sent, files in all) after each."""
        root = Path(folder).expanduser()
        files = local_files(root, recursive)
        if not files:
            raise GraftError(f"no files to send in {root}")
        upload: Upload | None = None
        unreadable: list[str] = []
        for part in upload_parts(files):
            with ExitStack() as stack:
                handles = []
                for name, path in part:
                    try:
                        handles.append(("file", (name, stack.enter_context(open(path, "rb")),
                                                 "application/octet-stream")))
                    except OSError as exc:
                        unreadable.append(f"{name}: {exc.strerror or exc}")
                if not handles:
                    continue
                path = f"{API}/uploads/{upload.id}" if upload else f"{API}/uploads"
                answer = self.http.json("POST", path, files=handles, data={"extract_zip": "false"},
                                        timeout=(self.http.timeout, UPLOAD_TIMEOUT_S))
            upload = upload or Upload(answer["id"], 0)
            upload.files += len(handles)
            if on_progress:
                on_progress(upload.files, len(files))
        if upload is None:
            raise GraftError(f"none of the files in {root} could be read")
        upload.unreadable = unreadable
        return upload

    def predict(self, model_id: str, *, input_dir: str | None = None, upload_id: str | None = None,
                **params: Any) -> JSON:
        """Submit a batch predict job on a server folder or an upload (top_k, threshold, ...); returns the job."""
        body = {"model_id": model_id, "input_dir": input_dir, "upload_id": upload_id, **params}
        return self.http.json("POST", f"{API}/jobs/predict", json={k: v for k, v in body.items() if v is not None})

    def predict_folder(self, model_id: str, folder: str | Path, recursive: bool = True,
                       on_progress: Callable[[int, int], None] | None = None, **params: Any) -> JSON:
        """Upload a local folder and submit a predict job on it; returns the job."""
        self.model(model_id)  # fail fast on a wrong id, before uploading anything
        upload = self.upload_images(folder, recursive, on_progress)
        return self.predict(model_id, upload_id=upload.id, recursive=recursive, **params)

    def results(self, job_id: str, page_size: int = 1000) -> Iterator[JSON]:
        """A succeeded predict job's rows ({"path", "label", "confidence", "top_k", "error", "ood_score",
        "reason"}), sorted by path."""
        return self.http.pages(f"{API}/jobs/{job_id}/results", {"limit": page_size})

    def results_csv(self, job_id: str, out: IO[bytes]) -> None:
        """Stream a succeeded predict job's results as CSV into the binary file out."""
        with self.http.send("GET", f"{API}/jobs/{job_id}/results", params={"format": "csv"}, stream=True) as answer:
            for block in answer.iter_content(1 << 16):
                out.write(block)

    def predict_now(self, model_id: str, images: list[str | Path], **params: Any) -> JSON:
        """Classify 1-32 local images synchronously: {"items", "summary"} in time, else the job (202)."""
        with ExitStack() as stack:
            parts = [("file", (Path(p).name, stack.enter_context(open(p, "rb")), "application/octet-stream"))
                     for p in images]
            data = {k: str(v) for k, v in params.items() if v is not None}
            # the server waits up to GRAFT_SYNC_PREDICT_WAIT_SECONDS for a worker before it answers
            return self.http.json("POST", f"{API}/models/{model_id}/predict", files=parts, data=data,
                                  timeout=(self.http.timeout, self.http.timeout + 60))

    # --- datasets -----------------------------------------------------------------------------------------------
    def datasets(self, page_size: int = 20) -> Iterator[JSON]:
        """Every dataset, newest first, with issue counts only."""
        return self.http.pages(f"{API}/datasets", {"limit": page_size})

    def dataset(self, dataset_id: str) -> JSON:
        """One dataset with its full inspection report."""
        return self.http.json("GET", f"{API}/datasets/{dataset_id}")

    def add_dataset(self, path: str | Path, name: str | None = None, on_progress: UploadProgress | None = None,
                    wait: bool = True, timeout: float | None = None) -> JSON:
        """Upload a folder (zipped here first) or a zip/tar archive; then, with wait, poll until it is inspected.

        on_progress(phase, done, total): "zipping" counts files, "uploading" counts bytes.
        """
        path = Path(path).expanduser()
        if not path.exists():
            raise GraftError(f"no such file or folder: {path}")
        with tempfile.TemporaryDirectory(prefix="graft-dataset-") as tmp:
            archive = path
            if path.is_dir():
                files = local_files(path)
                if not files:
                    raise GraftError(f"no files in {path}")
                archive = Path(tmp) / f"{path.resolve().name or 'dataset'}.zip"
                zip_folder(files, archive, on_progress)
            elif not path.name.lower().endswith(ARCHIVE_SUFFIXES):
                raise GraftError(f"{path} is neither a folder nor a .zip/.tar(.gz) archive")
            label = name or (path.resolve().name if path.is_dir() else path.name.split(".")[0])
            body = MultipartBody(archive, label, on_progress)
            try:
                dataset = self.http.json("POST", f"{API}/datasets", data=body,
                                         headers={"Content-Type": body.content_type},
                                         timeout=(self.http.timeout, UPLOAD_TIMEOUT_S))
            finally:
                body.close()
        log.info("dataset %s uploaded; a worker inspects it", dataset["id"])
        return self.wait_dataset(dataset["id"], timeout=timeout) if wait else dataset

    def add_server_dataset(self, path: str, name: str | None = None) -> JSON:
        """Record a folder on the server (under GRAFT_DATA_ROOTS) as a dataset; it is inspected in place."""
        return self.http.json("POST", f"{API}/datasets", json={"path": path, "name": name})

    def delete_dataset(self, dataset_id: str) -> JSON:
        """Delete a dataset (Conflict while a queued or running job uses it)."""
        return self.http.json("DELETE", f"{API}/datasets/{dataset_id}")

    def wait_dataset(self, dataset_id: str, interval: float = 0.5, timeout: float | None = None) -> JSON:
        """Poll a dataset until a worker has inspected it (status ready or failed) and return it."""
        return self._poll(lambda: self.dataset(dataset_id), lambda d: d["status"] != "inspecting", None, interval,
                          timeout, f"dataset {dataset_id}")

    def _poll(self, read: Callable[[], JSON], done: Callable[[JSON], bool],
              on_progress: Callable[[JSON], None] | None, interval: float, timeout: float | None, what: str) -> JSON:
        """read() every interval until done(); a network blip (Unavailable after retries) only costs a poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: JSON | None = None
        while True:
            try:
                last = read()
            except Unavailable as exc:
                log.warning("%s: %s; polling again", what, exc)
            else:
                if on_progress:
                    on_progress(last)
                if done(last):
                    return last
            if deadline is not None and time.monotonic() > deadline:
                state = last["status"] if last else "unreachable"
                raise WaitTimeout(f"{what} still {state} after {timeout} s")
            time.sleep(interval)
