"""Jobs survive crashes: real worker processes, real signals, a real Redis restarted mid-job."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from graft.cli.demo import _free_port
from graft.cli.sampledata import make_shapes_dataset
from graft.shared.config import Config
from graft.shared.db import session_scope
from graft.shared.models import Job
from graft.shared.queue import enqueue_train, make_celery, redis_ping
from tests.helpers import WorkerProcess, api_client, private_env, wait_for_job

# Resume after SIGKILL, duplicates, cancel, Redis faults: on both backends. Recovery is timed against 4 s leases; beside
# the other test process it holds because every test worker then runs one torch thread (tests.helpers.SHARED_CORES).
pytestmark = pytest.mark.both_databases

FAST_RECOVERY = {"GRAFT_LEASE_SECONDS": "4", "GRAFT_SWEEP_SECONDS": "1", "GRAFT_MAX_ATTEMPTS": "3",
                 "GRAFT_REQUEUE_SECONDS": "3"}
# Small enough to be quick, big enough that an epoch takes a few seconds on 2 cores.
JOB = {"backbone": "resnet18", "pretrained": False, "image_size": 96, "batch_size": 8}


@pytest.fixture(scope="module")
def env(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A private database and queue with short leases, so recovery happens within seconds."""
    return private_env(service_env, tmp_path_factory.mktemp("resilience"), "graft-res", **FAST_RECOVERY)


@pytest.fixture(scope="module")
def rclient(env: dict[str, str]):  # noqa: ANN201
    """An API client on the private database and queue."""
    return api_client(env)


@pytest.fixture(scope="module")
def dataset(data_root: Path) -> Path:
    """Three classes of 40 generated images."""
    return make_shapes_dataset(data_root / "resilience", per_class=40, size=112)


def start_workers(env: dict[str, str], log_dir: Path, count: int) -> list[WorkerProcess]:
    """Start count worker processes and wait until each is ready."""
    workers = [WorkerProcess(env, f"r{i}-{uuid.uuid4().hex[:6]}", log_dir / f"worker{i}.log") for i in range(count)]
    for w in workers:
        w.wait_ready()
    return workers


@pytest.fixture()
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Two fresh worker processes for one test."""
    started = start_workers(env, tmp_path, 2)
    yield started
    for w in started:
        w.stop()


def _job_row(env: dict[str, str], job_id: str) -> Job:
    with session_scope(Config.from_env(env).database_url) as session:
        return session.get(Job, job_id)


def _wait(predicate, timeout: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _submit(client, dataset: Path, **params) -> str:  # noqa: ANN001
    response = client.post("/api/v1/jobs/train", json={"data_dir": str(dataset), **JOB, **params})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def test_sigkill_during_epoch_two_resumes_on_the_other_worker(rclient, workers, dataset: Path) -> None:  # noqa: ANN001
    job_id = _submit(rclient, dataset, epochs=3)
    job = _wait(lambda: (j := rclient.get(f"/api/v1/jobs/{job_id}").get_json())["metrics"]["history"] and j,
                120, "epoch 1 to finish")
    assert [h["epoch"] for h in job["metrics"]["history"]] == [1], "epoch 2 finished before the kill"
    epoch_one = job["metrics"]["history"][0]
    victim = next(w for w in workers if job["worker"].startswith(w.name))
    survivor = next(w for w in workers if w is not victim)
    os.killpg(victim.proc.pid, signal.SIGKILL)  # the whole worker: main process and pool child
    victim.proc.wait()

    job = wait_for_job(rclient, job_id, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    assert job["worker"].startswith(survivor.name)
    assert [h["epoch"] for h in job["metrics"]["history"]] == [1, 2, 3]
    assert job["metrics"]["history"][0] == epoch_one  # epoch 1 came from the checkpoint, not a re-run
    assert len(rclient.get(f"/api/v1/models?job_id={job_id}").get_json()["items"]) == 1
    events = rclient.get(f"/api/v1/jobs/{job_id}/events").get_json()["items"]
    assert any(e["to"] == "queued" and "re-queued" in (e["message"] or "") for e in events)


def test_same_job_delivered_twice_trains_once(rclient, workers, dataset: Path, env: dict[str, str]) -> None:  # noqa: ANN001
    job_id = _submit(rclient, dataset, epochs=2, image_size=64)
    enqueue_train(make_celery(Config.from_env(env)), job_id)  # a duplicate delivery of the same job
    job = wait_for_job(rclient, job_id, timeout=180)
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert [h["epoch"] for h in job["metrics"]["history"]] == [1, 2]
    assert len(rclient.get(f"/api/v1/models?job_id={job_id}").get_json()["items"]) == 1
    time.sleep(2)  # the duplicate, if it were to run, would have started by now
    assert rclient.get(f"/api/v1/jobs/{job_id}").get_json()["attempts"] == 1


def test_job_that_kills_its_worker_every_time_fails_after_max_attempts(
    rclient, env: dict[str, str], dataset: Path, tmp_path: Path  # noqa: ANN001
) -> None:
    # The poison: each time the job starts, its pool process dies (the test kills it, as the OOM killer
    # would). The worker's main process survives and forks a new child; the job must not loop forever.
    (worker,) = start_workers(env, tmp_path, 1)
    try:
        job_id = _submit(rclient, dataset, epochs=3)
        killed: set[int] = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = _job_row(env, job_id)
            if row.status in ("failed", "succeeded", "cancelled"):
                break
            if row.status == "running" and row.worker_pid and row.worker_pid not in killed:
                os.kill(row.worker_pid, signal.SIGKILL)
                killed.add(row.worker_pid)
            time.sleep(0.05)
        job = rclient.get(f"/api/v1/jobs/{job_id}").get_json()
        events = rclient.get(f"/api/v1/jobs/{job_id}/events").get_json()["items"]
        assert job["status"] == "failed", (job, events, worker.log_tail())
        assert job["attempts"] == 3 and len(killed) == 3
        assert "gave up after 3 attempts" in job["error"]
        assert worker.proc.poll() is None  # the worker itself lives on
    finally:
        worker.stop()


def test_cancel_queued_running_and_finished(rclient, workers, dataset: Path, env: dict[str, str]) -> None:  # noqa: ANN001
    # Queued: recorded on a queue no worker listens to, cancelled, then delivered to a worker anyway.
    idle = api_client({**env, "GRAFT_QUEUE": "nobody-listens"})
    queued_id = _submit(idle, dataset, epochs=1)
    response = rclient.post(f"/api/v1/jobs/{queued_id}/cancel")
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    enqueue_train(make_celery(Config.from_env(env)), queued_id)

    # Running: stops at the next batch, keeps its checkpoint, ends cancelled.
    running_id = _submit(rclient, dataset, epochs=30)
    _wait(lambda: rclient.get(f"/api/v1/jobs/{running_id}").get_json()["metrics"]["history"], 120, "epoch 1")
    asked = time.monotonic()
    response = rclient.post(f"/api/v1/jobs/{running_id}/cancel")
    assert response.status_code == 202 and response.get_json()["cancel_requested"] is True
    job = wait_for_job(rclient, running_id, timeout=30)
    assert job["status"] == "cancelled" and time.monotonic() - asked <= 10
    assert (Config.from_env(env).artifacts_dir / "jobs" / running_id / "checkpoint.pt").is_file()
    assert rclient.get(f"/api/v1/models?job_id={running_id}").get_json()["items"] == []

    # The workers take the next job; the cancelled queued job never started.
    next_id = _submit(rclient, dataset, epochs=1, image_size=64)
    assert wait_for_job(rclient, next_id, timeout=120)["status"] == "succeeded"
    queued = rclient.get(f"/api/v1/jobs/{queued_id}").get_json()
    assert queued["status"] == "cancelled" and queued["attempts"] == 0 and queued["started_at"] is None

    # Finished: 409, nothing changes.
    response = rclient.post(f"/api/v1/jobs/{next_id}/cancel")
    assert response.status_code == 409 and "already succeeded" in response.get_json()["error"]
    assert rclient.post("/api/v1/jobs/unknown/cancel").status_code == 404


class PrivateRedis:
    """A redis-server of our own that keeps nothing on disk: restarted or flushed without touching the shared one."""

    def __init__(self) -> None:
        self.url = f"redis://127.0.0.1:{_free_port()}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and wait until it answers."""
        port = self.url.rsplit(":", 1)[1].split("/")[0]
        cmd = ["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: redis_ping(self.url), 10, "redis to answer")

    def stop(self) -> None:
        """Stop it; everything it held is gone."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture()
def private_redis() -> Iterator[PrivateRedis]:
    """A started private Redis, stopped after the test."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


def test_redis_restart_mid_job_loses_nothing(env: dict[str, str], dataset: Path, tmp_path: Path,
                                             private_redis: PrivateRedis) -> None:
    own = {**env, "GRAFT_REDIS_URL": private_redis.url}
    client = api_client(own)
    (worker,) = start_workers(own, tmp_path, 1)
    try:
        job_id = _submit(client, dataset, epochs=3)
        _wait(lambda: client.get(f"/api/v1/jobs/{job_id}").get_json()["status"] == "running", 60, "job to run")
        # Queued behind the running one: its message lives only in Redis, which keeps nothing on disk.
        waiting_id = _submit(client, dataset, epochs=1, image_size=64)
        private_redis.stop()
        time.sleep(1)
        private_redis.start()
        job = wait_for_job(client, job_id, timeout=180)
        assert job["status"] == "succeeded" and job["attempts"] == 1
        assert [h["epoch"] for h in job["metrics"]["history"]] == [1, 2, 3]
        # Its message was lost with Redis's memory; the sweeper's reconciler sent it again.
        waiting = wait_for_job(client, waiting_id, timeout=120)
        assert waiting["status"] == "succeeded" and waiting["attempts"] == 1, waiting
        events = client.get(f"/api/v1/jobs/{waiting_id}/events").get_json()["items"]
        assert any("message sent again" in (e["message"] or "") for e in events)
        # The worker reconnected: a job submitted after the restart runs too.
        after = _submit(client, dataset, epochs=1, image_size=64)
        assert wait_for_job(client, after, timeout=120)["status"] == "succeeded"
    finally:
        worker.stop()


def test_flushall_while_jobs_are_queued_loses_nothing(env: dict[str, str], dataset: Path, tmp_path: Path,
                                                      private_redis: PrivateRedis) -> None:
    import redis

    own = {**env, "GRAFT_REDIS_URL": private_redis.url}
    client = api_client(own)
    ids = [_submit(client, dataset, epochs=1, image_size=64) for _ in range(2)]  # no worker runs yet
    broker = redis.Redis.from_url(private_redis.url)
    train_queue = f"{own['GRAFT_QUEUE']}.train"
    assert broker.llen(train_queue) == 2
    broker.flushall()
    assert broker.llen(train_queue) == 0  # both messages are gone; only the database knows the jobs
    broker.close()
    (worker,) = start_workers(own, tmp_path, 1)
    try:
        for job_id in ids:
            job = wait_for_job(client, job_id, timeout=120)
            assert job["status"] == "succeeded" and job["attempts"] == 1, job
    finally:
        worker.stop()
