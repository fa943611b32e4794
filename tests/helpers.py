"""Helpers shared by the tests: paths, the test token, real worker processes, waiting for jobs.

Fixtures live in conftest.py; everything a test module imports lives here.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from graft.shared.queue import redis_ping

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"  # the real sets beside the checkout (never copied into it)
HYMENOPTERA = DATASETS / "hymenoptera"
REDIS_URL = os.environ.get("GRAFT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("GRAFT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TOKEN = "test-token"
WEBHOOK_KEY = "test-webhook-server-key-0123456789abcdef"  # GRAFT_WEBHOOK_KEY: users' secrets derive from it
# The smallest training spec the unit tests fit with: Lite0 at 64 px, one extra view, no early stop.
TINY_TRAIN = {"backbone": "efficientnet_lite0", "image_size": 64, "batch_size": 8, "views": 1, "patience": 0}
# Under pytest-xdist the test processes share the cores, and each starts workers of its own: one torch thread per
# job (and one BLAS/OpenMP thread in every process, tests/conftest.py) instead of cores / concurrency each, which
# oversubscribes the cores and leaves OpenMP threads spinning against each other (measured: a job 3x slower).
SHARED_CORES = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1


def ensure_redis() -> None:
    """Start a local redis-server when none answers at REDIS_URL (RuntimeError when that fails)."""
    if redis_ping(REDIS_URL):
        return
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError(f"no Redis answers at {REDIS_URL} and redis-server is not installed")
    subprocess.run([server, "--daemonize", "yes", "--port", "6379", "--save", "", "--appendonly", "no"], check=True)
    for _ in range(50):
        if redis_ping(REDIS_URL):
            return
        time.sleep(0.1)
    raise RuntimeError("started redis-server but it does not answer")


class WorkerProcess:
    """A real `graft worker` subprocess in its own process group."""

    def __init__(self, env: dict[str, str], name: str, log_path: Path, queues: str = "all",
                 concurrency: int = 1) -> None:
        self.name, self.log_path = name, log_path
        self.log = open(log_path, "wb")
        threads = ["--threads", "1"] if SHARED_CORES else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "graft.cli.main", "worker", "--name", name, "--concurrency", str(concurrency),
             "--loglevel", "INFO", "--queues", queues, *threads],
            cwd=ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the worker's log, for assertion messages."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until Celery logs that the worker is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            if " ready." in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """Warm shutdown, then kill the group if it lingers."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@contextmanager
def running_worker(service_env: dict[str, str], prefix: str, log_path: Path, queues: str = "all") -> Iterator[WorkerProcess]:
    """A real worker process on the session's queue, database and artifacts, stopped on exit."""
    env = {k: v for k, v in service_env.items() if k != "GRAFT_API_TOKENS"}
    proc = WorkerProcess(env, f"{prefix}-{uuid.uuid4().hex[:6]}", log_path, queues)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def model_file(artifacts_dir: Path, model_id: str) -> Path:
    """A trained model's artifact on the server's disk (the API shows no server paths; tests run beside it)."""
    return Path(artifacts_dir) / "models" / model_id / "model.pt"  # shared.storage.model_dir + checkpoint.MODEL_NAME


T = TypeVar("T")


def at_once(fn: Callable[[int], T], n: int, timeout: float = 60) -> list[T]:
    """fn(0), ..., fn(n - 1) on n threads released together; their results in that order (a thread's error is raised)."""
    barrier, results, errors = threading.Barrier(n), [None] * n, []

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = fn(index)
        except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if errors:
        raise errors[0]
    return results


# Private PostgreSQL schemas made during the session; tests/conftest.py drops them when the session ends.
SCHEMAS: list[str] = []


def new_schema(engine: "Engine") -> tuple[str, str]:
    """A new, empty schema in the PostgreSQL test database made through engine: (its name, a URL whose search_path
    is it)."""
    from sqlalchemy import text

    schema = f"graft_test_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    return schema, f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


def postgres_schema() -> str:
    """A new, upgraded schema in the PostgreSQL test database, dropped when the session ends; its URL."""
    from sqlalchemy import create_engine

    from graft.shared.schema import upgrade

    admin = create_engine(POSTGRES_URL)
    try:
        schema, url = new_schema(admin)
    finally:
        admin.dispose()
    SCHEMAS.append(schema)
    upgrade(url)
    return url


def is_postgres(env: dict[str, str]) -> bool:
    """True when env's database is PostgreSQL."""
    return env["GRAFT_DATABASE_URL"].startswith("postgresql")


def private_env(service_env: dict[str, str], base: Path, queue_prefix: str, **overrides: str) -> dict[str, str]:
    """The session's settings with a database and queue of one test module's own, on the session's backend: a
    SQLite file under base, or a new PostgreSQL schema."""
    database = postgres_schema() if is_postgres(service_env) else f"sqlite:///{base / 'graft.db'}"
    return {**service_env, "GRAFT_DATABASE_URL": database, "GRAFT_QUEUE": f"{queue_prefix}-{uuid.uuid4().hex[:6]}",
            **overrides}


def api_client(env: dict[str, str]):  # noqa: ANN201 - a FlaskClient
    """A test client of an app built from env (its database is upgraded at start), sending the bearer token."""
    from graft.api import create_app
    from graft.shared.config import Config

    client = create_app(Config.from_env(env)).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


def wait_for_job(client, job_id: str, timeout: float = 300) -> dict:  # noqa: ANN001
    """Poll the API until the job is finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").get_json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {job}")


def wait_for_dataset(client, dataset_id: str, timeout: float = 120) -> dict:  # noqa: ANN001
    """Poll the API until a worker has inspected the dataset (status ready or failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dataset = client.get(f"/api/v1/datasets/{dataset_id}").get_json()
        if dataset["status"] != "inspecting":
            return dataset
        time.sleep(0.2)
    raise AssertionError(f"dataset {dataset_id} still inspecting after {timeout}s: {dataset}")


@contextmanager
def api_process(env: dict[str, str], timeout: float = 30, args: tuple[str, ...] = (),
                log: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `graft api` process on a free port, healthy; yields (base URL, process) and stops it on exit."""
    import requests

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "graft.cli.main", "api", "--port", str(port), *args], cwd=ROOT,
                            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"graft api did not start (exit code {proc.poll()})") from None
                time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(30)  # Hypercorn's graceful stop: requests in flight get up to 20 s
        if log:
            out.close()


def serving_pids(proc: subprocess.Popen, timeout: float = 2) -> list[int]:
    """The processes of a `graft api` process that run the app: its spawned workers (not multiprocessing's resource
    tracker) with --workers N > 1, else the process itself."""
    deadline = time.monotonic() + timeout
    while True:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        workers = [int(pid) for pid in children
                   if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
        if workers or time.monotonic() > deadline:
            return workers or [proc.pid]
        time.sleep(0.1)


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM, kB): it only grows, so a difference is growth of the peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


class Receiver:
    """A real local webhook receiver (http.server in a thread on a loopback address, 127.0.0.1 unless host says):
    records each POST, answers by script."""

    def __init__(self, answers: list[int] | None = None, host: str = "127.0.0.1") -> None:
        import http.server
        import socket
        import threading

        self.answers, self.received = list(answers or []), []  # received: (headers, raw body) per POST
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append((dict(self.headers), body))
                code = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("Location", receiver.url + "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:  # quiet: the test asserts on received
                pass

        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.server = Server((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
