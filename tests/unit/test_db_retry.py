"""with_db_retry: connection errors are retried within the budget; anything else, or a longer outage, is raised."""
from __future__ import annotations

import time

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from graft.shared.db import with_db_retry


def _flaky(failures: int, error: Exception):  # noqa: ANN202
    calls = []

    def fn() -> str:
        calls.append(time.monotonic())
        if len(calls) <= failures:
            raise error
        return "written"

    return fn, calls


DOWN = OperationalError("UPDATE jobs", {}, ConnectionRefusedError("connection refused"))


def test_retries_a_connection_error_until_the_database_answers() -> None:
    fn, calls = _flaky(3, DOWN)
    assert with_db_retry(fn, 10, "test") == "written" and len(calls) == 4
    assert calls[-1] - calls[0] >= 0.25 + 0.5  # it backed off between tries


def test_gives_up_after_the_budget_with_the_last_error() -> None:
    fn, calls = _flaky(10_000, DOWN)
    started = time.monotonic()
    with pytest.raises(OperationalError):
        with_db_retry(fn, 1, "test")
    assert 1 <= time.monotonic() - started < 4 and len(calls) >= 2


def test_does_not_retry_other_errors() -> None:
    fn, calls = _flaky(1, IntegrityError("INSERT", {}, ValueError("duplicate")))
    with pytest.raises(IntegrityError):
        with_db_retry(fn, 10, "test")
    assert len(calls) == 1
