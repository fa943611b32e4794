"""A `graft worker` on PostgreSQL whose main process used the database before its pool forked (the schema check
does, and its lease sweeper keeps doing) runs a training job and a multi-chunk predict job at once, on two pool
children, while the sweeper queries every second: nothing shares a server session, nothing fails.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import func, select

from graft.cli.sampledata import make_shapes_dataset
from graft.shared.db import session_scope
from graft.shared.models import PredictionResult
from tests.helpers import WorkerProcess, api_client, postgres_schema, private_env, wait_for_job

pytestmark = pytest.mark.postgres
TINY = {"backbone": "efficientnet_lite0", "image_size": 64, "batch_size": 8, "views": 1, "patience": 0, "epochs": 3}


@pytest.fixture(scope="module")
def env(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A private PostgreSQL schema and queue; the sweeper runs every second."""
    base = tmp_path_factory.mktemp("worker-fork")
    return private_env(service_env, base, "graft-fork", GRAFT_DATABASE_URL=postgres_schema(),
                       GRAFT_SWEEP_SECONDS="1", GRAFT_LEASE_SECONDS="8")


@pytest.fixture(scope="module")
def worker(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One `graft worker` with two pool children, started as an operator starts it."""
    proc = WorkerProcess(env, "fork", tmp_path_factory.mktemp("fork-logs") / "worker.log", concurrency=2)
    proc.wait_ready()
    yield proc
    proc.stop()


def test_training_and_chunked_prediction_side_by_side(env: dict[str, str], worker: WorkerProcess,
                                                      data_root: Path) -> None:
    api = api_client(env)
    shapes = make_shapes_dataset(data_root / "fork-shapes", per_class=10, size=72)
    trained = api.post("/api/v1/jobs/train", json={"data_dir": str(shapes), **TINY}).get_json()
    first = wait_for_job(api, trained["id"], 240)
    assert first["status"] == "succeeded", first["error"]

    # A second training job and a six-chunk predict job run at once, one per pool child.
    again = api.post("/api/v1/jobs/train", json={"data_dir": str(shapes), **TINY, "seed": 1}).get_json()
    predict = api.post("/api/v1/jobs/predict", json={"model_id": first["model_id"], "input_dir": str(shapes),
                                                     "chunk_size": 5, "runtime": "torch"}).get_json()
    for job_id in (again["id"], predict["id"]):
        job = wait_for_job(api, job_id, 240)
        assert job["status"] == "succeeded", (job["error"], worker.log_tail())
    with session_scope(env["GRAFT_DATABASE_URL"]) as session:
        rows = session.scalar(select(func.count()).where(PredictionResult.job_id == predict["id"]))
    assert rows == len(list(shapes.rglob("*.jpg")))
    log = worker.log_tail(10**7)
    assert "lease sweep failed" not in log and "Traceback" not in log, log[-4000:]
