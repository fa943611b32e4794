"""Fixtures that start real services: Redis, PostgreSQL, `graft worker` processes, the Flask app.

Service fixtures start nothing until a test asks for them, so tests/unit runs with no services at all.
"""
from __future__ import annotations

import os
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from graft.shared.config import Config
from graft.shared.schema import upgrade
from tests.helpers import (
    HYMENOPTERA, POSTGRES_URL, REDIS_URL, SCHEMAS, TOKEN, WEBHOOK_KEY, WorkerProcess, ensure_redis, new_schema,
    SHARED_CORES, postgres_schema, running_worker,
)

if SHARED_CORES:  # before torch, numpy or OpenVINO load here or in a child: one thread per process (tests.helpers)
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

# The session's database backends. Tests marked `both_databases` (every flow that runs a job end to end) run on each;
# the rest only on SQLite. pytest groups the tests by backend, so each backend's worker starts once.
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep a test's PostgreSQL variant only where it is marked `both_databases`; group each module's tests on one
    backend for pytest-xdist (`--dist loadgroup`), so that a module's fixtures are built once per backend."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend", "") if callspec is not None else ""
        (drop if backend == "postgres" and item.get_closest_marker("both_databases") is None else keep).append(item)
        item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}-{backend}" if item.module else backend))
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", autouse=True)
def _drop_private_schemas() -> Iterator[None]:
    """Drop the PostgreSQL schemas tests made (tests.helpers.postgres_schema) once everything else has stopped."""
    yield
    if not SCHEMAS:
        return
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            for schema in SCHEMAS:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis that answers (started here if needed)."""
    try:
        ensure_redis()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    return REDIS_URL


@contextmanager
def _private_schema(engine: Engine) -> Iterator[str]:
    """A new schema in the PostgreSQL test database, dropped afterwards; yields a URL whose search_path is it."""
    try:
        schema, url = new_schema(engine)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not usable: {exc}")
    yield url
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An engine on the PostgreSQL test database itself, to create and drop private schemas."""
    admin = create_engine(POSTGRES_URL, pool_pre_ping=True)  # a test restarts PostgreSQL under this pool
    yield admin
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_url(postgres_admin: Engine) -> Iterator[str]:
    """A private schema in the PostgreSQL test database, dropped afterwards (tests upgrade it as they need)."""
    with _private_schema(postgres_admin) as url:
        yield url


@pytest.fixture()
def empty_postgres_url(postgres_url: str, postgres_admin: Engine) -> Iterator[str]:
    """A second private schema, empty, for one test (migration tests start from nothing or from old tables)."""
    from graft.shared.db import get_engine

    with _private_schema(postgres_admin) as url:
        yield url
        get_engine(url).dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database the service tests run on: "sqlite" (the default install) or "postgres" (production)."""
    return request.param


@pytest.fixture(scope="session")
def service_env(tmp_path_factory: pytest.TempPathFactory, redis_url: str, backend: str) -> dict[str, str]:
    """GRAFT_* variables for one test session: private database, artifacts, data root and queue."""
    base = tmp_path_factory.mktemp(f"graft-{backend}")
    data_root = base / "data"
    data_root.mkdir()
    roots = [str(data_root)] + ([str(HYMENOPTERA.resolve())] if HYMENOPTERA.is_dir() else [])
    if backend == "postgres":
        database_url = postgres_schema()  # upgraded there
    else:
        database_url = f"sqlite:///{base / 'graft.db'}"
        upgrade(database_url)  # as `graft db upgrade` would, before anything starts: tests may open sessions first
    return {
        "GRAFT_DATABASE_URL": database_url,
        # Tests that point the API or workers at a database of their own get it upgraded at start, one process at a
        # time (graft.shared.schema). Production runs `graft db upgrade` once instead (docker-compose.yml: migrate).
        "GRAFT_DB_AUTO_UPGRADE": "1",
        "GRAFT_REDIS_URL": redis_url,
        "GRAFT_ARTIFACTS_DIR": str(base / "artifacts"),
        "GRAFT_DATA_ROOTS": ":".join(roots),
        "GRAFT_API_TOKENS": TOKEN,
        "GRAFT_QUEUE": f"graft-test-{uuid.uuid4().hex[:8]}",
        "GRAFT_RESNET18_WEIGHTS": "",
        "TORCH_HOME": str(base / "torch-home"),  # an empty hub cache: no stray resnet18 weights
        "GRAFT_WEBHOOK_KEY": WEBHOOK_KEY,
        "GRAFT_WEBHOOK_BACKOFF_SECONDS": "1",  # a failed callback is retried within seconds, not minutes
        # Some tests record queued jobs no worker is meant to take; the reconciler's own test shortens this.
        "GRAFT_REQUEUE_SECONDS": "3600",
        # Tests send wrong tokens on purpose, from one address; the limit's own test sets a small one.
        "GRAFT_AUTH_FAIL_LIMIT": "10000/minute",
    }


@pytest.fixture(scope="session")
def service_config(service_env: dict[str, str]) -> Config:
    """The Config the API under test and the workers share."""
    return Config.from_env(service_env)


@pytest.fixture(scope="session")
def data_root(service_config: Config) -> Path:
    """A folder inside GRAFT_DATA_ROOTS for test datasets."""
    return service_config.data_roots[0]


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
    from graft.api import create_app

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
