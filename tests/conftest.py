"""Fixtures that start real services: Redis, PostgreSQL, `graft worker` processes, the Flask app."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text

from shared.config import Config
from shared.queue import redis_ping

ROOT = Path(__file__).resolve().parent.parent
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera"
REDIS_URL = os.environ.get("GRAFT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("GRAFT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TOKEN = "test-token"


def _ensure_redis() -> None:
    if redis_ping(REDIS_URL):
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail(f"no Redis answers at {REDIS_URL} and redis-server is not installed")
    subprocess.run([server, "--daemonize", "yes", "--port", "6379", "--save", "", "--appendonly", "no"], check=True)
    for _ in range(50):
        if redis_ping(REDIS_URL):
            return
        time.sleep(0.1)
    pytest.fail("started redis-server but it does not answer")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis that answers (started here if needed)."""
    _ensure_redis()
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private schema in the PostgreSQL test database, dropped afterwards."""
    schema = f"graft_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not usable: {exc}")
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(scope="session")
def service_env(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> dict[str, str]:
    """GRAFT_* variables for one test session: private database, artifacts, data root and queue."""
    base = tmp_path_factory.mktemp("graft")
    data_root = base / "data"
    data_root.mkdir()
    roots = [str(data_root)] + ([str(HYMENOPTERA.resolve())] if HYMENOPTERA.is_dir() else [])
    return {
        "GRAFT_DATABASE_URL": f"sqlite:///{base / 'graft.db'}",
        "GRAFT_REDIS_URL": redis_url,
        "GRAFT_ARTIFACTS_DIR": str(base / "artifacts"),
        "GRAFT_DATA_ROOTS": ":".join(roots),
        "GRAFT_API_TOKENS": TOKEN,
        "GRAFT_QUEUE": f"graft-test-{uuid.uuid4().hex[:8]}",
        "GRAFT_RESNET18_WEIGHTS": "",
        "TORCH_HOME": str(base / "torch-home"),  # an empty hub cache: no stray resnet18 weights
    }


@pytest.fixture(scope="session")
def service_config(service_env: dict[str, str]) -> Config:
    """The Config the API under test and the workers share."""
    return Config.from_env(service_env)


@pytest.fixture(scope="session")
def data_root(service_config: Config) -> Path:
    """A folder inside GRAFT_DATA_ROOTS for test datasets."""
    return service_config.data_roots[0]


class WorkerProcess:
    """A real `graft worker` subprocess in its own process group."""

    def __init__(self, env: dict[str, str], name: str, log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--name", name, "--concurrency", "1", "--loglevel", "INFO"],
            cwd=ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

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
def running_worker(service_env: dict[str, str], prefix: str, log_path: Path) -> Iterator[WorkerProcess]:
    """A real worker process on the session's queue, database and artifacts, stopped on exit."""
    env = {k: v for k, v in service_env.items() if k != "GRAFT_API_TOKENS"}
    proc = WorkerProcess(env, f"{prefix}-{uuid.uuid4().hex[:6]}", log_path)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def worker(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One real worker process for the session."""
    with running_worker(service_env, "w1", tmp_path_factory.mktemp("logs") / "worker1.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors on a shared 2-core machine: one thread avoids OpenMP spin contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def app(service_config: Config):  # noqa: ANN201
    """The Flask app under test, on the session's database and queue."""
    from api import create_app

    return create_app(service_config)


@pytest.fixture()
def http_app(app) -> Iterator[str]:  # noqa: ANN001
    """The app under test served over real HTTP by waitress in a thread; yields its base URL."""
    from waitress import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    yield f"http://127.0.0.1:{server.effective_port}"
    server.close()
    server.task_dispatcher.shutdown()


@pytest.fixture()
def client(app):  # noqa: ANN001, ANN201
    """A test client that sends the bearer token."""
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return test_client


def wait_for_job(client, job_id: str, timeout: float = 300) -> dict:  # noqa: ANN001
    """Poll the API until the job is finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").get_json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {job}")
