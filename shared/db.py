"""Database engine and sessions: SQLite (WAL, busy timeout) by default, PostgreSQL in production."""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from graft.shared.config import get_config

SQLITE_BUSY_TIMEOUT_MS = 30_000
T = TypeVar("T")
log = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI types
    # WAL lets the API read while a worker writes; the busy timeout makes concurrent writers wait, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


MAX_ENGINES = 8
_engines: OrderedDict[str, Engine] = OrderedDict()
_engines_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """One engine per database URL per process (the MAX_ENGINES most recent); creates the SQLite file's folder.

    Tables come from graft.shared.schema. An engine pushed out of the cache is disposed at once: left to the garbage
    collector, its pooled connections would close at some random later moment (or warn that nobody closed them).
    """
    with _engines_lock:
        engine = _engines.get(url)
        if engine is not None:
            _engines.move_to_end(url)
            return engine
        engine = _engines[url] = _create_engine(url)
        while len(_engines) > MAX_ENGINES:
            _engines.popitem(last=False)[1].dispose()  # still usable by its holders: it reconnects if asked
        return engine


def forget_inherited_connections() -> None:
    """In a process just forked: drop the parent's pooled connections without closing them (the parent owns them).

    Runs by itself in every child forked by os.fork (Celery's pool children, a child Celery forks
    again after one died): a connection used by two processes is one server session with two talkers, which on
    PostgreSQL ends in errors such as DuplicatePreparedStatement or results read by the wrong process.
    """
    global _engines_lock
    # Another thread of the parent may have held the lock at the fork; in the child it would never be released.
    _engines_lock = threading.Lock()
    for engine in list(_engines.values()):
        engine.dispose(close=False)


# Every fork, whoever makes it: a child must never reuse its parent's sockets (SQLAlchemy's documented recipe).
os.register_at_fork(after_in_child=forget_inherited_connections)


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        config = get_config()
        # prepare_threshold=None: no server-side prepared statements. Graft's queries are short and varied, so they
        # save little, and they fail behind PgBouncer in transaction mode (a statement prepared on one server
        # session, executed on another).
        connect_args = {"prepare_threshold": None} if parsed.get_driver_name() == "psycopg" else {}
        engine = create_engine(url, pool_pre_ping=True, pool_size=config.db_pool_size,
                               max_overflow=config.db_pool_overflow, pool_timeout=config.db_pool_timeout_s,
                               connect_args=connect_args)
    return engine


def session_factory(url: str) -> sessionmaker[Session]:
    """A sessionmaker bound to the engine for url."""
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A short-lived session: commit on success, roll back on error, always close."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(url: str) -> bool:
    """True when the database answers a trivial query."""
    from sqlalchemy import text

    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - health check reports any failure as down
        return False


def with_db_retry(fn: Callable[[], T], budget_s: float, what: str) -> T:
    """Run fn (one whole short transaction) again, with backoff, while the database is unreachable, for budget_s.

    A PostgreSQL restart or failover drops every connection for a few seconds; a running job's writes wait it out
    instead of turning it into "training crashed". Only connection-level errors are retried: fn must be safe to
    run twice (ours are compare-and-set updates). The pool's pre-ping replaces the dead connections.
    """
    def note(state: RetryCallState) -> None:
        log.warning("%s: database unreachable (%s), retry %d in %.1f s", what, state.outcome.exception(),
                    state.attempt_number, state.next_action.sleep if state.next_action else 0.0)

    retrying = Retrying(
        retry=retry_if_exception_type((OperationalError, InterfaceError)),
        wait=wait_exponential(multiplier=0.25, max=5), stop=stop_after_delay(budget_s), reraise=True,
        before_sleep=note,
    )
    return retrying(fn)
