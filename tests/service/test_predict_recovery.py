"""Predict jobs survive crashes like training jobs: real worker processes, real SIGKILLs, a real cancel.

Each test checks the end state that matters: the job's status and exactly one row per file.
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import pytest
from sqlalchemy import select

from graft.shared import lifecycle
from graft.shared.config import Config
from graft.shared.db import session_scope
from graft.shared.models import Job, PredictChunk, PredictionResult, TrainedModel
from tests.helpers import WorkerProcess, api_client, private_env, wait_for_job

# Every recovery path on SQLite and on PostgreSQL; recovery is timed against 4 s leases (see test_resilience).
pytestmark = pytest.mark.both_databases
# Short leases so recovery takes seconds; the same as test_resilience's.
FAST_RECOVERY = {"GRAFT_LEASE_SECONDS": "4", "GRAFT_SWEEP_SECONDS": "1", "GRAFT_MAX_ATTEMPTS": "3",
                 "GRAFT_REQUEUE_SECONDS": "3"}
LEASE_S = 4
FILES = 480  # tiny JPEGs; at image size 160 a chunk of 60 takes about half a second on 2 idle cores
T = TypeVar("T")


@pytest.fixture(scope="module")
def env(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A private database and queue with short leases."""
    return private_env(service_env, tmp_path_factory.mktemp("predict-recovery"), "graft-prec", **FAST_RECOVERY)


@pytest.fixture(scope="module")
def url(env: dict[str, str]) -> str:
    """The private database's URL."""
    return Config.from_env(env).database_url


@pytest.fixture(scope="module")
def api(env: dict[str, str]):  # noqa: ANN201
    """An API client on the private database and queue."""
    return api_client(env)


@pytest.fixture(scope="module")
def model_id(url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained resnet18 saved as a model artifact (the labels do not matter here, the rows do)."""
    from graft.worker.core.backbones import BACKBONES, build_model
    from graft.worker.core.checkpoint import save_model_artifact
    from graft.worker.core.transforms import Preprocessing

    info = BACKBONES["resnet18"]
    meta = {"backbone": "resnet18", "classes": ["a", "b", "c"], "image_size": 160,
            "preprocessing": Preprocessing.for_size(160, info.mean, info.std).to_dict(), "metrics": {}, "params": {}}
    path = save_model_artifact(tmp_path_factory.mktemp("model"), build_model("resnet18", 3, False).eval(), meta)
    with session_scope(url) as session:
        owner = lifecycle.create_job(session, "train", {"note": "owner of a hand-made model"})
        lifecycle.transition(session, owner, lifecycle.RUNNING)  # ended, so that no sweep sends it to a worker
        lifecycle.transition(session, owner, lifecycle.SUCCEEDED)
        model = TrainedModel(job_id=owner.id, backbone="resnet18", classes=meta["classes"], image_size=160,
                             metrics={}, path=str(path))
        session.add(model)
        session.flush()
        return model.id


@pytest.fixture(scope="module")
def images(data_root: Path) -> Path:
    """FILES small random JPEGs in four folders."""
    import cv2

    root = data_root / "predict-recovery"
    rng = np.random.default_rng(7)
    for i in range(FILES):
        path = root / f"d{i % 4}" / f"{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    return root


def _start(env: dict[str, str], log_dir: Path, count: int) -> list[WorkerProcess]:
    workers = [WorkerProcess(env, f"p{i}-{uuid.uuid4().hex[:6]}", log_dir / f"worker{i}.log") for i in range(count)]
    for w in workers:
        w.wait_ready()
    return workers


@pytest.fixture(scope="module")
def pair(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[WorkerProcess]]:
    """Two worker processes shared by the tests below (the last one kills one of them)."""
    started = _start(env, tmp_path_factory.mktemp("pair-logs"), 2)
    yield started
    for w in started:
        w.stop()


def _submit(api, model_id: str, images: Path, chunk_size: int) -> str:  # noqa: ANN001
    """Submit a predict job of every file under images, in chunks of chunk_size."""
    # Eager PyTorch loads in a fraction of a second; OpenVINO's conversion would cost every fresh pool child seconds.
    response = api.post("/api/v1/jobs/predict", json={"model_id": model_id, "input_dir": str(images),
                                                       "chunk_size": chunk_size, "runtime": "torch"})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def _wait(predicate: Callable[[], T], timeout: float, what: str, pause: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(pause)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _job(url: str, job_id: str) -> Job:
    with session_scope(url) as session:
        return session.get(Job, job_id)


def _chunks(url: str, job_id: str) -> list[PredictChunk]:
    with session_scope(url) as session:
        return list(session.scalars(select(PredictChunk).where(PredictChunk.job_id == job_id)
                                    .order_by(PredictChunk.index)))


def _rows(url: str, job_id: str) -> list[str]:
    with session_scope(url) as session:
        return list(session.scalars(select(PredictionResult.path).where(PredictionResult.job_id == job_id)))


def _assert_one_row_per_file(url: str, job_id: str, images: Path) -> None:
    expected = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.jpg"))
    assert sorted(_rows(url, job_id)) == expected


def _events(api, job_id: str) -> list[dict]:  # noqa: ANN001
    return api.get(f"/api/v1/jobs/{job_id}/events").get_json()["items"]


def test_pool_child_killed_while_listing_is_taken_over(api, url: str, pair, model_id: str,  # noqa: ANN001
                                                       images: Path) -> None:
    # Freeze the lister as soon as its job is running; if its chunk rows are not written yet, it was caught listing.
    # Listing takes milliseconds, so a try can miss: then it is let go and another job tried.
    folder = images / "d0"  # 120 files
    for _ in range(8):
        job_id = _submit(api, model_id, folder, chunk_size=60)
        job = _wait(lambda: (j := _job(url, job_id)).status == "running" and j, 30, "the job to run", pause=0.002)
        os.kill(job.worker_pid, signal.SIGSTOP)
        if not _chunks(url, job_id):
            break
        os.kill(job.worker_pid, signal.SIGCONT)
        assert wait_for_job(api, job_id, timeout=60)["status"] == "succeeded"
    else:
        pytest.fail("never caught a lister before it wrote its chunks")
    os.kill(job.worker_pid, signal.SIGKILL)  # the pool child dies; the worker's main process forks another
    done = wait_for_job(api, job_id, timeout=60)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2  # taken over by the new child (a dead pid on its node) or, if the lease ran out
    # first (a child takes seconds to start), re-queued by a sweep
    assert any(e["to"] == "queued" and ("is gone" in (e["message"] or "") or "re-queued" in (e["message"] or ""))
               for e in _events(api, job_id))
    _assert_one_row_per_file(url, job_id, folder)
    assert [c.index for c in _chunks(url, job_id)] == [0, 1]  # listed once, by the attempt that lived


def test_cancel_running_predict_job_stops_it_and_keeps_its_rows(api, url: str, pair, model_id: str,  # noqa: ANN001
                                                                 images: Path) -> None:
    job_id = _submit(api, model_id, images, chunk_size=30)  # 16 chunks
    _wait(lambda: _rows(url, job_id), 60, "the first chunk's rows")
    response = api.post(f"/api/v1/jobs/{job_id}/cancel")
    asked = time.monotonic()
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled", response.get_json()
    kept = sorted(_rows(url, job_id))
    assert 0 < len(kept) < FILES and len(kept) % 30 == 0  # whole chunks only
    # Within 10 s nothing runs any more: chunks caught mid-way stop at their next batch and give themselves back.
    _wait(lambda: all(c.status != "running" for c in _chunks(url, job_id)), 10, "running chunks to stop")
    assert time.monotonic() - asked < 10
    time.sleep(2)  # a chunk that still stored rows now would show here
    assert sorted(_rows(url, job_id)) == kept
    job = _job(url, job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert [e["to"] for e in _events(api, job_id)][-1] == "cancelled"
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409


def test_whole_worker_killed_mid_chunk_recovers_on_the_other(api, url: str, pair, model_id: str,  # noqa: ANN001
                                                             images: Path) -> None:
    job_id = _submit(api, model_id, images, chunk_size=60)  # 8 chunks
    names = {w.name: w for w in pair}

    def first_claimed() -> PredictChunk | None:
        return next((c for c in _chunks(url, job_id) if c.status == "running"), None)

    chunk = _wait(first_claimed, 60, "a chunk to be claimed", pause=0.01)
    victim = next(w for name, w in names.items() if chunk.worker.startswith(name))
    survivor = next(w for w in pair if w is not victim)
    os.killpg(victim.proc.pid, signal.SIGKILL)  # the whole worker: main process, sweeper and pool child
    victim.proc.wait()
    killed = time.monotonic()
    lost = next(c for c in _chunks(url, job_id) if c.index == chunk.index)
    assert lost.status == "running" and lost.worker == chunk.worker  # killed mid-chunk, nothing stored

    # Swept back to pending (and sent again) by the survivor's sweeper once the lease ran out, not after Redis's
    # visibility timeout; the survivor then takes it when it comes to it in the queue.
    _wait(lambda: (c := _chunks(url, job_id)[chunk.index]).status != "running" or c.attempts == 2, 4 * LEASE_S,
          "the lost chunk to be swept", pause=0.05)
    assert time.monotonic() - killed <= 2 * LEASE_S + 1
    job = wait_for_job(api, job_id, timeout=90)
    retaken = _chunks(url, job_id)[chunk.index]
    assert retaken.attempts == 2 and retaken.worker.startswith(survivor.name)
    assert job["status"] == "succeeded", job["error"]
    _assert_one_row_per_file(url, job_id, images)
    with session_scope(url) as session:  # the lost chunk's rows came from the survivor
        writers = set(session.scalars(select(PredictionResult.worker).where(
            PredictionResult.job_id == job_id, PredictionResult.chunk == chunk.index)))
    assert len(writers) == 1 and writers.pop().startswith(survivor.name)
    assert all(c.status == "done" for c in _chunks(url, job_id))


def test_chunk_that_kills_its_worker_every_time_fails_the_job(api, url: str, env: dict[str, str],  # noqa: ANN001
                                                              model_id: str, images: Path, tmp_path: Path) -> None:
    # The poison is chunk 1: each time it starts, its pool process dies (the test kills it, as the OOM killer
    # would). The worker's main process survives and forks a new child; the chunk must not loop forever.
    (worker,) = _start(env, tmp_path, 1)
    try:
        folder = images / "d1"
        job_id = _submit(api, model_id, folder, chunk_size=40)  # 3 chunks of 40
        killed: set[int] = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and _job(url, job_id).status not in lifecycle.FINISHED:
            for chunk in _chunks(url, job_id):
                if chunk.index == 1 and chunk.status == "running" and chunk.worker_pid not in killed:
                    os.kill(chunk.worker_pid, signal.SIGKILL)
                    killed.add(chunk.worker_pid)
            time.sleep(0.02)
        job = api.get(f"/api/v1/jobs/{job_id}").get_json()
        assert job["status"] == "failed", (job, worker.log_tail())
        assert len(killed) == 3
        assert job["error"].startswith("chunk 1 gave up after 3 attempts"), job["error"]
        first = sorted(p.name for p in folder.glob("*.jpg"))[40:43]
        assert f"(40 files: {', '.join(first)} and 37 more)" in job["error"]
        assert _chunks(url, job_id)[0].status == "done" and len(_rows(url, job_id)) in (40, 80)
        assert worker.proc.poll() is None  # the worker itself lives on
    finally:
        worker.stop()
