"""Predict chunks on SQLite (and PostgreSQL with -m postgres): the claim compare-and-set, renewals, the sweep,
the one-transaction store and finish."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import func, select, update

from graft.shared import chunks, lifecycle
from graft.shared.config import Config
from graft.shared.db import get_engine, session_scope
from graft.shared.models import Job, JobEvent, PredictChunk, PredictionResult, utcnow
from graft.shared.schema import upgrade
from tests.helpers import at_once

MARK = "unit-test-chunks"  # the model_id of every job these tests create
ALIVE, DEAD = (lambda _holder: True), (lambda _holder: False)
NAMES = [[f"a/{i}.jpg" for i in range(5)], ["b/0.jpg", "b/1.jpg"]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file for one test, or the session's private PostgreSQL schema (tests touch only their jobs)."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        upgrade(url)
        yield url
        with session_scope(url) as session:  # leave no running job for a later test's sweeper on this schema
            for job in session.scalars(select(Job).where(Job.kind.in_(["predict", "train"]))).all():
                if (job.params or {}).get("model_id") == MARK:
                    session.delete(job)
        return
    url = f"sqlite:///{tmp_path / 'graft.db'}"
    upgrade(url)
    yield url
    get_engine(url).dispose()


def _job(url: str, names: list[list[str]] = NAMES, kind: str = "predict") -> str:
    """A running predict job (listed: its chunks written, its lease cleared)."""
    with session_scope(url) as session:
        job = lifecycle.create_job(session, kind, {"model_id": MARK, "input_dir": "/x"})
        lifecycle.transition(session, job, lifecycle.RUNNING, worker="lister", worker_pid=1,
                             progress={"files_total": sum(map(len, names))}, metrics={"ignored_files": 0})
        if kind == "predict":
            chunks.create_chunks(session, job.id, names)
        return job.id


def _claim(url: str, job_id: str, index: int = 0, worker: str = "w1", pid: int = 100, alive=ALIVE,  # noqa: ANN001
           max_attempts: int = 3) -> PredictChunk | None:
    with session_scope(url) as session:
        return chunks.claim_chunk(session, job_id, index, worker, pid, 30, max_attempts, alive)


def _chunk(url: str, job_id: str, index: int = 0) -> PredictChunk:
    with session_scope(url) as session:
        return session.get(PredictChunk, (job_id, index))


def _job_row(url: str, job_id: str) -> Job:
    with session_scope(url) as session:
        return session.get(Job, job_id)


def _expire(url: str, job_id: str, index: int = 0) -> None:
    with session_scope(url) as session:
        session.execute(update(PredictChunk).where(PredictChunk.job_id == job_id, PredictChunk.index == index)
                        .values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_files_of_names_the_first_few() -> None:
    assert chunks.files_of(["a.jpg"]) == "1 file: a.jpg"
    assert chunks.files_of([f"{i}.jpg" for i in range(8)]) == "8 files: 0.jpg, 1.jpg, 2.jpg and 5 more"


def test_claim_takes_a_pending_chunk_once(url: str) -> None:
    job_id = _job(url)
    chunk = _claim(url, job_id)
    assert chunk is not None and chunk.status == chunks.RUNNING and chunk.attempts == 1 and chunk.worker_pid == 100
    assert _claim(url, job_id, worker="w2", pid=200) is None  # held by a live holder with a live lease
    assert _chunk(url, job_id).worker == "w1"


def test_claim_takes_over_an_expired_lease_or_a_dead_holder(url: str) -> None:
    job_id = _job(url)
    _claim(url, job_id)
    assert _claim(url, job_id, pid=101, alive=DEAD).attempts == 2  # a dead local pid: at once
    _expire(url, job_id)
    taken = _claim(url, job_id, worker="w2", pid=200)  # an expired lease: whoever holds it
    assert taken.attempts == 3 and taken.worker == "w2"


def test_claim_refuses_done_chunks_and_jobs_not_running(url: str) -> None:
    job_id = _job(url)
    _claim(url, job_id)
    with session_scope(url) as session:
        assert chunks.finish_chunk(session, job_id, 0, "w1", 100, 1)
    assert _claim(url, job_id, alive=DEAD) is None
    with session_scope(url) as session:
        lifecycle.request_cancel(session, session.get(Job, job_id))
    assert _claim(url, job_id, index=1) is None and _chunk(url, job_id, 1).status == chunks.PENDING
    assert _claim(url, "no-such-job") is None


def test_chunk_that_used_its_attempts_fails_the_job_naming_it(url: str) -> None:
    job_id = _job(url)
    for pid in (100, 101, 102):
        assert _claim(url, job_id, index=0, pid=pid, alive=DEAD) is not None
    assert _claim(url, job_id, index=0, pid=103, alive=DEAD) is None
    job = _job_row(url, job_id)
    assert job.status == lifecycle.FAILED
    assert job.error.startswith("chunk 0 gave up after 3 attempts")
    assert "(5 files: a/0.jpg, a/1.jpg, a/2.jpg and 2 more)" in job.error


def test_concurrent_claims_have_one_winner(url: str) -> None:
    job_id = _job(url)
    claims = at_once(lambda pid: _claim(url, job_id, pid=pid), 6)
    won = [pid for pid, claim in enumerate(claims) if claim is not None]
    assert len(won) == 1 and _chunk(url, job_id).attempts == 1 and _chunk(url, job_id).worker_pid == won[0]


def test_renew_finish_and_release_only_while_held(url: str) -> None:
    job_id = _job(url)
    _claim(url, job_id)
    with session_scope(url) as session:
        assert chunks.renew_chunk(session, job_id, 0, "w1", 100, 1, 30)
        assert not chunks.renew_chunk(session, job_id, 0, "w1", 999, 1, 30)  # not our pid
    _claim(url, job_id, pid=101, alive=DEAD)  # taken over: attempt 2
    with session_scope(url) as session:
        assert not chunks.renew_chunk(session, job_id, 0, "w1", 100, 1, 30)
        assert not chunks.finish_chunk(session, job_id, 0, "w1", 100, 1)
        assert not chunks.release_chunk(session, job_id, 0, "w1", 100, 1)
        assert chunks.release_chunk(session, job_id, 0, "w1", 101, 2, error="boom")
    assert _chunk(url, job_id).status == chunks.PENDING and _chunk(url, job_id).error == "boom"


def test_renew_says_stop_once_the_job_is_cancelled(url: str) -> None:
    job_id = _job(url)
    _claim(url, job_id)
    with session_scope(url) as session:
        job = lifecycle.request_cancel(session, session.get(Job, job_id))
        assert job.status == lifecycle.CANCELLED  # a running predict job is cancelled at once
    with session_scope(url) as session:
        assert not chunks.renew_chunk(session, job_id, 0, "w1", 100, 1, 30)


def test_cancel_of_a_running_training_job_is_only_a_request(url: str) -> None:
    job_id = _job(url, kind="train")
    with session_scope(url) as session:
        job = lifecycle.request_cancel(session, session.get(Job, job_id))
        assert job.status == lifecycle.RUNNING and job.cancel_requested


def test_sweep_resends_expired_chunks_and_fails_exhausted_ones(url: str) -> None:
    live, lost, poison = _job(url), _job(url), _job(url)
    _claim(url, live)
    _claim(url, lost)
    _expire(url, lost)
    for pid in (100, 101, 102):
        _claim(url, poison, pid=pid, alive=DEAD)
    _expire(url, poison)
    mine = {live, lost, poison}
    with session_scope(url) as session:
        assert [s for s in chunks.sweep_chunks(session, max_attempts=3) if s[0] in mine] == [(lost, 0)]
    assert _chunk(url, live).status == chunks.RUNNING
    swept = _chunk(url, lost)
    assert swept.status == chunks.PENDING and swept.attempts == 1 and "expired" in swept.error
    job = _job_row(url, poison)
    assert job.status == lifecycle.FAILED
    assert job.error.startswith("chunk 0 gave up after 3 attempts: lease of w1 (pid 102) expired (5 files: ")
    with session_scope(url) as session:  # a failed job's chunks are left alone
        assert [s for s in chunks.sweep_chunks(session, max_attempts=3) if s[0] in mine] == []


def test_resend_stalled_sends_pending_chunks_of_jobs_nothing_moved(url: str) -> None:
    stalled, moving = _job(url), _job(url)
    with session_scope(url) as session:
        session.execute(update(PredictChunk).where(PredictChunk.job_id.in_([stalled, moving]))
                        .values(updated_at=utcnow() - timedelta(seconds=600)))
    _claim(url, moving)  # a chunk of this job just moved: its queue is being worked through
    with session_scope(url) as session:
        assert sorted(s for s in chunks.resend_stalled(session, 300) if s[0] in (stalled, moving)) == [
            (stalled, 0), (stalled, 1)]
    with session_scope(url) as session:  # the clock restarted
        assert [s for s in chunks.resend_stalled(session, 300) if s[0] in (stalled, moving)] == []


def test_sweep_expired_returns_kinds(url: str) -> None:
    job_id = _job(url)
    with session_scope(url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    with session_scope(url) as session:
        assert (job_id, "predict") in lifecycle.sweep_expired(session, 3)


def _row(path: str) -> dict:
    return {"path": path, "label": "x", "confidence": 0.9, "top_k": [], "error": None}


def test_store_replaces_earlier_rows_and_the_last_chunk_finishes_the_job(url: str) -> None:
    from graft.worker.predict_chunks import Held, _store

    config = Config(database_url=url)
    job_id = _job(url)
    first = Held(job_id, 0, "w1", 100, 1)
    _claim(url, job_id)
    with session_scope(url) as session:  # rows an earlier attempt left (it cannot, but the store must not mind)
        session.add(PredictionResult(job_id=job_id, chunk=0, path="a/0.jpg", label="old"))
    assert _store(config, first, [_row(p) for p in NAMES[0]])
    assert not _store(config, first, [_row(p) for p in NAMES[0]])  # done: no longer ours
    assert _job_row(url, job_id).status == lifecycle.RUNNING and _job_row(url, job_id).progress["files_done"] == 5
    _claim(url, job_id, index=1)
    assert _store(config, Held(job_id, 1, "w1", 100, 1), [_row(p) for p in NAMES[1]])
    job = _job_row(url, job_id)
    assert job.status == lifecycle.SUCCEEDED and job.metrics["summary"]["files"] == 7
    with session_scope(url) as session:
        paths = session.scalars(select(PredictionResult.path).where(PredictionResult.job_id == job_id)).all()
        assert sorted(paths) == sorted(NAMES[0] + NAMES[1])
        events = session.scalars(select(JobEvent.to_status).where(JobEvent.job_id == job_id)).all()
        assert events.count(lifecycle.SUCCEEDED) == 1


def test_store_refused_after_a_cancel_keeps_earlier_rows(url: str) -> None:
    from graft.worker.predict_chunks import Held, _store

    config = Config(database_url=url)
    job_id = _job(url)
    _claim(url, job_id)
    _claim(url, job_id, index=1)
    assert _store(config, Held(job_id, 0, "w1", 100, 1), [_row(p) for p in NAMES[0]])
    with session_scope(url) as session:
        lifecycle.request_cancel(session, session.get(Job, job_id))
    assert not _store(config, Held(job_id, 1, "w1", 100, 1), [_row(p) for p in NAMES[1]])
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).where(PredictionResult.job_id == job_id)) == 5
        assert session.get(Job, job_id).status == lifecycle.CANCELLED
