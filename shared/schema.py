"""The database schema's version: Alembic migrations (graft.shared.migrations), run by `graft db upgrade`.

The API and the workers call ensure_schema at start and refuse a database that is not at this code's head.
A database made by create_all before Graft had migrations has tables but no alembic_version: upgrade recognises
the revision its tables match (legacy_revision) and stamps it there before upgrading.
"""
from __future__ import annotations

import functools
import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from graft.shared.config import Config
from graft.shared.db import get_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"
VERSION_TABLE = "alembic_version"
LOCK_KEY = 0x6772616674  # "graft": the PostgreSQL advisory lock that lets one upgrade run at a time
HINT = "run `graft db upgrade` (docs/operations.md, Schema changes)"
log = logging.getLogger(__name__)


class SchemaOutOfDate(RuntimeError):
    """The database's schema is not the one this Graft was written for."""


class Upgraded(NamedTuple):
    """What `upgrade` did: the revision before (None: none recorded), the legacy stamp if any, the revision after."""

    before: str | None
    stamped: str | None
    after: str | None


def alembic_config(url: str = "", connection: Connection | None = None) -> AlembicConfig:
    """Alembic's configuration in code: our scripts, and the connection env.py runs them on."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")  # versions/0005_predict_chunks.py
    cfg.attributes.update(url=url, connection=connection)
    return cfg


@functools.lru_cache(maxsize=1)
def scripts() -> ScriptDirectory:
    """The migration scripts shipped with this Graft."""
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The revision this code's models are at (one head: tests/unit/test_migrations.py checks)."""
    return scripts().get_current_head()


def _revision(conn: Connection) -> str | None:
    # Read directly: MigrationContext would log two INFO lines at every API and worker start.
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def legacy_revision(conn: Connection) -> str | None:
    """The revision a database without alembic_version matches, from its tables; None when it has none of ours.

    Made by create_all (development databases from before migrations): with predict_chunks (0006), with
    job_log_lines (0005), since fca4ce5 with webhook_deliveries (0003), since be5e7ef with datasets.status (0002),
    before that (the last release, 5a9476b) the baseline.
    """
    insp = inspect(conn)
    tables = set(insp.get_table_names())
    if "predict_chunks" in tables and "job_log_lines" in tables:
        return "0006"
    if "job_log_lines" in tables:
        return "0005"
    if "webhook_deliveries" in tables:
        return "0003"
    if "datasets" in tables and "status" in {c["name"] for c in insp.get_columns("datasets")}:
        return "0002"
    return BASELINE if "jobs" in tables else None


def _recorded(url: str) -> tuple[str | None, str | None]:
    """The revision alembic_version records, and (without one) the revision the tables match."""
    with get_engine(url).connect() as conn:
        current = _revision(conn)
        return current, None if current else legacy_revision(conn)


def describe(url: str) -> str:
    """One line for `graft db current`: the revision, and whether it is this code's head."""
    current, legacy = _recorded(url)
    want = head()
    if current == want:
        return f"{current} (head)"
    if current is None:
        return (f"none: tables from before migrations, matching {legacy}; {HINT}" if legacy
                else f"none: an empty database; {HINT}")
    return f"{current}: behind head {want}; {HINT}" if _known(current) else f"{current}: unknown to this Graft"


def _known(revision: str) -> bool:
    try:
        return scripts().get_revision(revision) is not None
    except CommandError:
        return False


def check_schema(url: str) -> None:
    """Raise SchemaOutOfDate unless the database is at head, with a message that says what to do."""
    current, legacy = _recorded(url)
    want = head()
    if current == want:
        return
    if current is not None and not _known(current):
        raise SchemaOutOfDate(f"the database schema is at revision {current}, which this Graft (head {want}) does "
                              "not know: a newer release upgraded it; run that release")
    what = (f"is at revision {current}" if current else
            "has tables from before migrations" if legacy else "is empty")
    raise SchemaOutOfDate(f"the database schema {what}, this Graft needs revision {want}: {HINT}")


def ensure_schema(config: Config) -> None:
    """At API or worker start: upgrade when GRAFT_DB_AUTO_UPGRADE is on, else refuse a schema that is not at head."""
    try:
        check_schema(config.database_url)
    except SchemaOutOfDate:
        if not config.db_auto_upgrade:
            raise
        done = upgrade(config.database_url)
        log.info("database schema upgraded from %s to %s (GRAFT_DB_AUTO_UPGRADE)", done.before or done.stamped,
                 done.after)


@contextmanager
def _migrating(url: str) -> Iterator[Connection]:
    """One connection in one transaction, held by one upgrader at a time."""
    engine = get_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            # A batch migration copies a table and drops the old one; with foreign keys on, dropping `jobs` would
            # cascade into its children. The pragma is ignored inside a transaction, so it is set before one.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                if sqlite:  # the write lock now: a second upgrader waits (busy timeout), then finds it done
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                else:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
                yield conn
                if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise RuntimeError("the migration left rows whose foreign keys point nowhere; rolled back")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def upgrade(url: str, revision: str = "head") -> Upgraded:
    """Bring the database to revision (head by default): a fresh one is created, a legacy one stamped first."""
    with _migrating(url) as conn:
        before = _revision(conn)
        stamped = None if before else legacy_revision(conn)
        cfg = alembic_config(url, conn)
        if stamped:
            log.warning("database has Graft's tables but no alembic_version (made before migrations): stamping it "
                        "at %s, the revision its tables match", stamped)
            command.stamp(cfg, stamped)
        command.upgrade(cfg, revision)
        return Upgraded(before, stamped, _revision(conn))


def new_revision(message: str) -> Path:
    """Write versions/NNNN_<message>.py: what the models add to head, autogenerated against a scratch SQLite."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'scratch.db'}"
        upgrade(url)
        try:
            with get_engine(url).begin() as conn:
                cfg = alembic_config(url, conn)
                script = command.revision(cfg, message=message, autogenerate=True, rev_id=f"{int(head()) + 1:04d}")
        finally:
            get_engine(url).dispose()
    scripts.cache_clear()
    return Path(script.path)
