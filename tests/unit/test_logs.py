"""Log lines carry their job's id (text and JSON), and a worker's job lines reach the database without blocking."""
from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select, update

from graft.shared import logs
from graft.shared.config import Config
from graft.shared.db import get_engine, session_scope
from graft.shared.lifecycle import create_job
from graft.shared.logs import configure_logging, job_context, start_job_log_capture
from graft.shared.models import Job, JobLogLine
from graft.shared.schema import upgrade


@pytest.fixture()
def root_logging() -> Iterator[io.StringIO]:
    """Root logging configured by Graft into a string; restored afterwards."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    root.handlers[:] = saved
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_each_line_about_a_job_carries_its_id(root_logging: None, fmt: str) -> None:
    configure_logging(Config.from_env({"GRAFT_LOG_FORMAT": fmt}))
    out = io.StringIO()
    logging.getLogger().handlers[0].setStream(out)
    log = logging.getLogger("graft.test")
    with job_context("abc123"):
        log.info("epoch %d/%d", 1, 3)
    log.info("not about a job")
    first, second = out.getvalue().splitlines()
    if fmt == "json":
        first, second = json.loads(first), json.loads(second)
        assert first["message"] == "epoch 1/3" and first["job_id"] == "abc123" and first["level"] == "INFO"
        assert first["logger"] == "graft.test" and "time" in first and second["job_id"] is None
    else:
        assert "[job abc123]: epoch 1/3" in first and "[job" not in second


def test_bad_log_format_is_refused() -> None:
    from graft.shared.config import ConfigError

    with pytest.raises(ConfigError, match="GRAFT_LOG_FORMAT"):
        Config.from_env({"GRAFT_LOG_FORMAT": "xml"})


def test_job_lines_reach_the_database_even_from_inside_a_transaction(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    url = f"sqlite:///{tmp_path / 'graft.db'}"
    upgrade(url)
    with session_scope(url) as session:
        job_id = create_job(session, "train", {"data_dir": "/d"}).id
    monkeypatch.setattr(logs, "MAX_LINES_PER_JOB", 5)
    listener = start_job_log_capture(url, "host:1", ("/srv/graft/artifacts",))
    log = logging.getLogger("graft.worker.test")
    log.setLevel(logging.DEBUG)  # the capture's own INFO threshold is what must drop the debug line
    try:
        with job_context(job_id):
            with session_scope(url) as session:  # holds SQLite's write lock, as a status change does when it logs
                session.execute(update(Job).where(Job.id == job_id).values(error=None))
                started = time.monotonic()
                log.info("inside a transaction")
                assert time.monotonic() - started < 1  # queued, not written here
            log.debug("too detailed to keep")
            logging.getLogger("celery.test").info("not Graft's")
            log.warning("resuming from %s", "/srv/graft/artifacts/jobs/x/checkpoint.pt")
            for i in range(10):
                log.warning("line %d", i)
        log.info("after the job")
    finally:
        listener.stop()  # flushes the queue
        log.setLevel(logging.NOTSET)
        logging.getLogger("graft").handlers = [h for h in logging.getLogger("graft").handlers
                                               if not isinstance(h, logging.handlers.QueueHandler)]
    with session_scope(url) as session:
        rows = session.scalars(select(JobLogLine).order_by(JobLogLine.id)).all()
        lines = [(r.job_id, r.level, r.message, r.worker) for r in rows]
    get_engine(url).dispose()
    assert lines[0] == (job_id, "INFO", "inside a transaction", "host:1")
    assert [m for _, _, m, _ in lines] == ["inside a transaction", "resuming from <artifacts>/jobs/x/checkpoint.pt", "line 0",
                                          "line 1", "(log capped at 5 lines)"]
