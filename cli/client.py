"""A small HTTP client for the Graft API, used by the CLI commands and the demo."""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

import requests


class ClientError(RuntimeError):
    """The API answered with an error (its JSON message is kept)."""


class GraftClient:
    """Calls /api/v1 with an optional bearer token."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Send a request and return its JSON, raising ClientError with the server's message."""
        try:
            kwargs.setdefault("timeout", self.timeout)
            response = self.session.request(method, f"{self.url}{path}", **kwargs)
        except requests.ConnectionError:
            raise ClientError(f"cannot reach the Graft API at {self.url} (is `graft api` running? set --url or GRAFT_URL)") from None
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200]}
        if response.status_code >= 400:
            raise ClientError(f"HTTP {response.status_code}: {body.get('error', body)}")
        return body

    def train(self, **params: Any) -> dict[str, Any]:
        """Submit a training job."""
        return self.request("POST", "/api/v1/jobs/train", json=params)

    def job(self, job_id: str) -> dict[str, Any]:
        """Read a job."""
        return self.request("GET", f"/api/v1/jobs/{job_id}")

    def jobs(self, status: str | None = None) -> dict[str, Any]:
        """List jobs (first page)."""
        return self.request("GET", "/api/v1/jobs", params={"status": status} if status else None)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job."""
        return self.request("POST", f"/api/v1/jobs/{job_id}/cancel")

    def model(self, model_id: str) -> dict[str, Any]:
        """Read a model."""
        return self.request("GET", f"/api/v1/models/{model_id}")

    def upload(self, files: list[tuple[str, Any]], upload_id: str | None = None,
               timeout: float = 600.0) -> dict[str, Any]:
        """Send one part of (name, file object) pairs: starts an upload, or adds to upload_id."""
        path = f"/api/v1/uploads/{upload_id}" if upload_id else "/api/v1/uploads"
        parts = [("file", (name, handle, "application/octet-stream")) for name, handle in files]
        return self.request("POST", path, files=parts, data={"extract_zip": "false"}, timeout=timeout)

    def predict(self, **params: Any) -> dict[str, Any]:
        """Submit a predict job (model_id and input_dir or upload_id)."""
        return self.request("POST", "/api/v1/jobs/predict", json=params)

    def results(self, job_id: str, after: str | None = None, limit: int = 1000) -> dict[str, Any]:
        """One page of a predict job's results, sorted by path."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return self.request("GET", f"/api/v1/jobs/{job_id}/results", params=params)

    def results_csv(self, job_id: str, out: Any) -> None:
        """Stream a predict job's results as CSV into the binary file out."""
        try:
            response = self.session.get(f"{self.url}/api/v1/jobs/{job_id}/results", params={"format": "csv"},
                                        stream=True, timeout=self.timeout)
        except requests.ConnectionError:
            raise ClientError(f"cannot reach the Graft API at {self.url}") from None
        with response:
            if response.status_code >= 400:
                raise ClientError(f"HTTP {response.status_code}: {response.text[:200]}")
            for block in response.iter_content(1 << 16):
                out.write(block)

    def predict_now(self, model_id: str, files: list[tuple[str, Any]], **form: Any) -> dict[str, Any]:
        """Classify 1-32 (name, file object) images synchronously."""
        parts = [("file", (name, handle, "application/octet-stream")) for name, handle in files]
        data = {k: str(v) for k, v in form.items() if v is not None}
        return self.request("POST", f"/api/v1/models/{model_id}/predict", files=parts, data=data)

    def wait_dataset(self, dataset_id: str, interval: float = 0.5, timeout: float | None = None) -> dict[str, Any]:
        """Poll a dataset until a worker has inspected it (status ready or failed); returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            dataset = self.request("GET", f"/api/v1/datasets/{dataset_id}")
            if dataset["status"] != "inspecting":
                return dataset
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"dataset {dataset_id} still inspecting after {timeout} s (is a worker running?)")
            time.sleep(interval)

    def wait(self, job_id: str, on_update: Callable[[dict[str, Any]], None] | None = None,
             interval: float = 1.0, timeout: float | None = None) -> dict[str, Any]:
        """Poll a job until it is finished; returns the final job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(interval)


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    """A one-line text progress bar for a job."""
    progress = job.get("progress") or {}
    fraction = float(progress.get("fraction") or 0.0)
    bar = "#" * int(fraction * width)
    parts = [f"[{bar:<{width}}] {fraction * 100:5.1f}%", job["status"]]
    if job.get("kind") == "predict":
        parts.append(f"{progress.get('files_done', 0)}/{progress.get('files_total', '?')} files")
    elif progress.get("phase") in ("loading", "caching"):
        what = "loading images" if progress["phase"] == "loading" else "computing frozen-trunk features"
        parts.append(f"{what} {progress.get('done', 0)}/{progress.get('total', '?')}")
    elif progress.get("epochs"):
        parts.append(f"epoch {progress.get('epoch', 0)}/{progress['epochs']}")
    best = (job.get("metrics") or {}).get("best_val_acc")
    if best is not None:
        parts.append(f"best val_acc {best:.3f}")
    if progress.get("eta_s") and job["status"] == "running":
        parts.append(f"eta {progress['eta_s']:.0f}s")
    return "  ".join(parts)


class ProgressPrinter:
    """Draws a job's progress bar on stderr: one updating line on a TTY, a line per change otherwise."""

    def __init__(self) -> None:
        self.last = ""

    def __call__(self, job: dict[str, Any]) -> None:
        line = progress_line(job)
        done = job["status"] not in ("queued", "running")
        if sys.stderr.isatty():
            sys.stderr.write(f"\r{line}\033[K" + ("\n" if done else ""))
        elif line != self.last:
            sys.stderr.write(line + "\n")
        self.last = line
        sys.stderr.flush()
