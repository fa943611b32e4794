"""A forked process never talks on its parent's database connections, and PostgreSQL runs without prepared statements.

Real forks (os.fork, as gunicorn and Celery's prefork pool make them) and a real PostgreSQL: the parent's pooled
connection is checked in before the fork, so a child that reused it would report the parent's server process.
"""
from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from graft.shared.db import get_engine, session_scope

pytestmark = pytest.mark.postgres

ROUNDS = 60  # past psycopg's default prepare threshold (5 runs of one statement) many times over


def _backend_pid(url: str) -> int:
    with session_scope(url) as session:
        return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _fork(fn) -> int:  # noqa: ANN001 - a callable returning 0 on success
    """Run fn in a forked child (exit status 0: fn returned 0, 99: it raised); the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = fn()
        finally:
            os._exit(code)
    return pid


def _exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_forked_child_opens_its_own_connection(postgres_url: str) -> None:
    parent = _backend_pid(postgres_url)  # leaves one connection in the pool, as `graft worker`'s schema check does
    read, write = os.pipe()

    def child() -> int:
        os.write(write, str(_backend_pid(postgres_url)).encode())
        return 0

    assert _exit_code(_fork(child)) == 0
    os.close(write)
    child_pid = int(os.read(read, 32))
    os.close(read)
    assert child_pid != parent, "the child talked on the parent's server session"
    assert _backend_pid(postgres_url) == parent  # the parent's pooled connection is still its own and still works


def test_parent_and_child_query_at_once_after_the_fork(postgres_url: str) -> None:
    """The failure seen in production: a worker's sweeper thread and a pool child on one inherited connection."""
    _backend_pid(postgres_url)  # one idle connection in the pool at the fork: both sides would take it

    def child() -> int:
        for _ in range(ROUNDS):
            _backend_pid(postgres_url)
        return 0

    pid = _fork(child)
    errors, reaped, status = [], 0, 0
    while not reaped:  # the parent keeps using its pool while the child works, as the lease sweeper does
        try:
            _backend_pid(postgres_url)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        reaped, status = os.waitpid(pid, os.WNOHANG) if not errors else os.waitpid(pid, 0)
    assert not errors and os.waitstatus_to_exitcode(status) == 0, errors


def test_no_server_side_prepared_statements(postgres_url: str) -> None:
    with session_scope(postgres_url) as session:
        for _ in range(ROUNDS):
            session.execute(text("SELECT 1")).scalar_one()
        prepared = session.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar_one()
    assert prepared == 0  # PgBouncer in transaction mode needs this; see docs/operations.md


def test_pool_is_sized_from_config(postgres_url: str) -> None:
    from graft.shared.config import get_config

    pool = get_engine(postgres_url).pool
    assert pool.size() == get_config().db_pool_size and pool._max_overflow == get_config().db_pool_overflow
