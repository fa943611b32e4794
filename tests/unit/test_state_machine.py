"""The job state machine, the job serializer and the schema, on both SQLite and PostgreSQL."""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from graft.shared.db import SQLITE_BUSY_TIMEOUT_MS, get_engine, session_scope
from graft.shared.lifecycle import (
    CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, STATUSES, SUCCEEDED, TRANSITIONS, IllegalTransition,
    can_transition, create_job, resend_stale_queued, transition,
)
from graft.shared.models import Job, JobEvent, TrainedModel, utcnow
from graft.shared.schema import upgrade
from graft.shared.serializers import model_ids_for, serialize_job
from tests.helpers import at_once

# A legal walk from a fresh (queued) job to each status.
PATH_TO = {QUEUED: [], RUNNING: [RUNNING], SUCCEEDED: [RUNNING, SUCCEEDED], FAILED: [FAILED], CANCELLED: [CANCELLED]}
PAIRS = list(itertools.product(STATUSES, STATUSES))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database URL: a private SQLite file, or the session's private PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('statedb') / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    yield url
    get_engine(url).dispose()


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file for one test."""
    url = f"sqlite:///{tmp_path / 'graft.db'}"
    upgrade(url)
    yield url
    get_engine(url).dispose()


def _new_job(url: str, statuses: list[str]) -> str:
    with session_scope(url) as session:
        job = create_job(session, "train", {"data_dir": "/data/x"})
        for status in statuses:
            transition(session, job, status)
        return job.id


def _events(url: str, job_id: str) -> list[tuple[str | None, str, str | None]]:
    with session_scope(url) as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [(e.from_status, e.to_status, e.message) for e in rows]


def _snapshot(url: str, job_id: str) -> dict:
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        return {"status": job.status, "attempts": job.attempts, "started_at": job.started_at,
                "finished_at": job.finished_at, "error": job.error, "worker": job.worker}


def test_transition_table_covers_every_status() -> None:
    assert set(TRANSITIONS) == set(STATUSES)
    assert all(TRANSITIONS[s] == frozenset() for s in FINISHED)
    assert all(targets <= set(STATUSES) for targets in TRANSITIONS.values())
    assert not can_transition("bogus", QUEUED) and not can_transition(QUEUED, "bogus")


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_transition(db_url: str, current: str, target: str) -> None:
    job_id = _new_job(db_url, PATH_TO[current])
    before, events_before = _snapshot(db_url, job_id), _events(db_url, job_id)
    assert before["status"] == current
    legal = target in TRANSITIONS[current]
    assert can_transition(current, target) is legal
    fields = {"error": "boom"} if target == FAILED else {"worker": "w1@host"} if target == RUNNING else {}
    with session_scope(db_url) as session:
        job = session.get(Job, job_id)
        if legal:
            assert transition(session, job, target, message="why", **fields) is job
        else:
            with pytest.raises(IllegalTransition) as info:
                transition(session, job, target, message="why", **fields)
            assert (info.value.current, info.value.target) == (current, target)
            assert f"from {current} to {target}" in str(info.value)
    after, events_after = _snapshot(db_url, job_id), _events(db_url, job_id)
    if not legal:
        assert after == before and events_after == events_before
        return
    assert events_after == events_before + [(current, target, "why")]
    assert after["status"] == target
    if target == RUNNING:
        assert after["attempts"] == before["attempts"] + 1
        assert after["started_at"] is not None and after["worker"] == "w1@host"
        assert before["started_at"] is None or after["started_at"] >= before["started_at"]
    else:
        assert after["attempts"] == before["attempts"]
        assert after["started_at"] == before["started_at"]
    if target in FINISHED:
        assert after["finished_at"] is not None
    else:
        assert after["finished_at"] is None
    if target == FAILED:
        assert after["error"] == "boom"


def test_requeue_after_lost_worker_counts_attempts(db_url: str) -> None:
    job_id = _new_job(db_url, [RUNNING, QUEUED, RUNNING, SUCCEEDED])
    assert [(a, b) for a, b, _ in _events(db_url, job_id)] == [
        (None, QUEUED), (QUEUED, RUNNING), (RUNNING, QUEUED), (QUEUED, RUNNING), (RUNNING, SUCCEEDED)
    ]
    state = _snapshot(db_url, job_id)
    assert state["attempts"] == 2 and state["finished_at"] >= state["started_at"]


def test_create_job_records_creation_event(db_url: str) -> None:
    with session_scope(db_url) as session:
        job = create_job(session, "predict", {"model_id": "m"})
        job_id = job.id
    assert len(job_id) == 32
    assert _events(db_url, job_id) == [(None, QUEUED, "created")]
    with session_scope(db_url) as session:
        job = session.get(Job, job_id)
        assert (job.kind, job.status, job.params, job.attempts) == ("predict", QUEUED, {"model_id": "m"}, 0)
        assert job.created_at is not None and job.started_at is None and job.finished_at is None


def test_create_job_refuses_unknown_kind(db_url: str) -> None:
    with session_scope(db_url) as session:
        count = session.scalar(select(func.count()).select_from(Job))
        with pytest.raises(ValueError, match="unknown job kind"):
            create_job(session, "bake", {})
        assert session.scalar(select(func.count()).select_from(Job)) == count


def test_serialize_job_has_every_resource_key(db_url: str) -> None:
    job_id = _new_job(db_url, [RUNNING])
    with session_scope(db_url) as session:
        job = session.get(Job, job_id)
        job.progress = {"epoch": 1, "epochs": 3}
        data = serialize_job(job, model_id=None)
    expected = {"id", "kind", "status", "params", "progress", "metrics", "model_id", "error",
                "created_at", "started_at", "finished_at"}
    assert expected <= set(data)
    assert set(data["progress"]) == {"epoch", "epochs", "fraction", "eta_s"}
    assert set(data["metrics"]) == {"history", "best_val_acc", "skipped_files"}
    assert data["progress"] == {"epoch": 1, "epochs": 3, "fraction": 0.0, "eta_s": None}
    assert data["metrics"] == {"history": [], "best_val_acc": None, "skipped_files": []}
    assert (data["id"], data["kind"], data["status"], data["model_id"]) == (job_id, "train", RUNNING, None)
    assert data["params"] == {"data_dir": "/data/x"} and data["error"] is None and data["finished_at"] is None
    for key in ("created_at", "started_at"):
        assert isinstance(datetime.fromisoformat(data[key]), datetime)


def _model(job_id: str) -> TrainedModel:
    return TrainedModel(job_id=job_id, backbone="resnet18", classes=["a", "b"], image_size=64, path="/m/model.pt")


def test_one_model_per_job(db_url: str) -> None:
    job_id = _new_job(db_url, [RUNNING, SUCCEEDED])
    with session_scope(db_url) as session:
        model = _model(job_id)
        session.add(model)
    with pytest.raises(IntegrityError):
        with session_scope(db_url) as session:
            session.add(_model(job_id))
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).where(TrainedModel.job_id == job_id)) == 1
        assert model_ids_for(session, [job_id, "none"]) == {job_id: model.id}
        assert model_ids_for(session, []) == {}


def test_sqlite_runs_in_wal_mode_with_busy_timeout(sqlite_url: str) -> None:
    with get_engine(sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_two_threads_write_one_sqlite_file(sqlite_url: str) -> None:
    written = at_once(lambda _: [_new_job(sqlite_url, [RUNNING, SUCCEEDED]) for _ in range(15)], 2)
    created = [job_id for batch in written for job_id in batch]
    assert len(set(created)) == 30
    with session_scope(sqlite_url) as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.status == SUCCEEDED)) == 30
        assert session.scalar(select(func.count()).select_from(JobEvent)) == 90


def _age_events(url: str, job_id: str, seconds: float) -> None:
    with session_scope(url) as session:
        session.execute(update(JobEvent).where(JobEvent.job_id == job_id)
                        .values(created_at=utcnow() - timedelta(seconds=seconds)))


def test_resend_stale_queued_picks_only_queued_jobs_left_alone_too_long(db_url: str) -> None:
    fresh = _new_job(db_url, [])
    lost = _new_job(db_url, [])
    running = _new_job(db_url, [RUNNING])
    cancelled = _new_job(db_url, [CANCELLED])
    for job_id in (lost, running, cancelled):
        _age_events(db_url, job_id, 600)
    with session_scope(db_url) as session:
        picked = resend_stale_queued(session, 300)
    assert (lost, "train") in picked
    assert not {fresh, running, cancelled} & {job_id for job_id, _ in picked}
    assert _events(db_url, lost)[-1][:2] == (QUEUED, QUEUED) and "sent again" in _events(db_url, lost)[-1][2]
    assert _snapshot(db_url, lost)["status"] == QUEUED  # a re-send changes nothing but the record
    with session_scope(db_url) as session:  # the event restarted the clock: no second message this period
        assert lost not in {job_id for job_id, _ in resend_stale_queued(session, 300)}
