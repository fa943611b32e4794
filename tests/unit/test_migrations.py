"""Schema migrations: a previous release's database upgrades with `graft db upgrade` and keeps every row readable;
the migrations build exactly the models (so nobody forgets one); the API and workers refuse a schema that is behind.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import BigInteger, DateTime, inspect, select, text, update

from graft.shared.config import Config
from graft.shared.db import get_engine, session_scope
from graft.shared.models import Base, DatasetRecord, Job, PredictionResult, TrainedModel
from graft.shared.schema import (
    BASELINE, SchemaOutOfDate, alembic_config, check_schema, describe, ensure_schema, head, scripts, upgrade,
)
from graft.shared.serializers import result_row, serialize_dataset, serialize_event, serialize_job, serialize_model
from tests import legacy_schema as legacy
from tests.helpers import ROOT, at_once

DBS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=DBS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a fresh SQLite file, or a fresh private PostgreSQL schema."""
    if request.param == "postgres":
        yield request.getfixturevalue("empty_postgres_url")
        return
    url = f"sqlite:///{tmp_path / 'graft.db'}"
    yield url
    get_engine(url).dispose()


def _previous_release(url: str) -> None:
    """The database release 5a9476b's create_all made, with its rows."""
    with get_engine(url).begin() as conn:
        legacy.metadata.create_all(conn)
        legacy.fill(conn)


def _graft_db(url: str, *args: str) -> subprocess.CompletedProcess:
    """`graft db ...` as an operator runs it, on url."""
    env = {**os.environ, "GRAFT_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "graft.cli.main", "db", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _differences(url: str) -> list:
    """What autogenerate would write for this database: nothing, when the migrations built the models exactly."""
    with get_engine(url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_one_head_and_files_named_by_revision() -> None:
    assert len(scripts().get_heads()) == 1, "two migrations claim the same parent: renumber the newer one"
    for script in scripts().walk_revisions():
        assert Path(script.path).name.startswith(f"{script.revision}_"), script.path
    assert scripts().get_base() == BASELINE


def test_fresh_database_upgrades_to_exactly_the_models(empty_url: str) -> None:
    assert "an empty database" in describe(empty_url)
    done = upgrade(empty_url)
    assert (done.before, done.stamped, done.after) == (None, None, head())
    assert _differences(empty_url) == []  # alembic check: a model change without its migration fails here
    assert describe(empty_url) == f"{head()} (head)"
    assert upgrade(empty_url).before == head()  # again: nothing to do
    check_schema(empty_url)


def test_previous_release_upgrades_with_graft_db_upgrade_and_keeps_every_row(empty_url: str) -> None:
    _previous_release(empty_url)
    assert "tables from before migrations, matching 0001" in _graft_db(empty_url, "current").stdout
    done = _graft_db(empty_url, "upgrade")
    assert done.returncode == 0, done.stderr
    assert f"stamped at {BASELINE}, upgraded to {head()}" in done.stdout
    assert _differences(empty_url) == []
    with session_scope(empty_url) as session:
        job = session.get(Job, legacy.JOB_ID)
        assert job.owner_id is None  # rows from before owners: only admins see them
        out = serialize_job(job, legacy.MODEL_ID)
        assert (out["status"], out["model_id"], out["params"]["epochs"]) == ("succeeded", legacy.MODEL_ID, 2)
        assert (out["created_at"], out["finished_at"]) == (legacy.AT["created"].isoformat(),
                                                          legacy.AT["finished"].isoformat())
        assert out["created_at"].endswith("+00:00") and out["callback"] is None
        assert [(e["from"], e["to"], e["at"]) for e in map(serialize_event, job.events)] == [
            (None, "queued", legacy.AT["created"].isoformat()), ("queued", "running", legacy.AT["started"].isoformat()),
            ("running", "succeeded", legacy.AT["finished"].isoformat())]
        model = serialize_model(session.get(TrainedModel, legacy.MODEL_ID))
        assert (model["job_id"], model["classes"], model["created_at"]) == (
            legacy.JOB_ID, ["ants", "bees"], legacy.AT["finished"].isoformat())
        clean, broken = (serialize_dataset(session.get(DatasetRecord, i)) for i in legacy.DATASET_IDS)
        assert (clean["status"], clean["error"], clean["size_bytes"], clean["num_images"]) == ("ready", None,
                                                                                              2**31 - 1, 4)
        assert (broken["status"], broken["issues"][0]["code"], broken["path"]) == ("failed", "one_class",
                                                                                   "/data/one-class")
        assert clean["created_at"] == legacy.AT["created"].isoformat()
        (row,) = session.scalars(select(PredictionResult).where(PredictionResult.job_id == legacy.PREDICT_ID))
        assert result_row(row)["label"] == "ants"
        session.execute(update(DatasetRecord).where(DatasetRecord.id == legacy.DATASET_IDS[0])
                        .values(size_bytes=5 * 2**30))  # 5 GiB: past 32 bits, refused before 0004 on PostgreSQL
    with session_scope(empty_url) as session:
        assert session.get(DatasetRecord, legacy.DATASET_IDS[0]).size_bytes == 5 * 2**30


@pytest.mark.parametrize(("left_out", "stamped"), [(("job_log_lines", "predict_chunks"), "0003"),
                                                    (("predict_chunks",), "0005"), ((), "0006")])
def test_a_database_from_main_before_migrations_is_stamped_where_its_tables_are(
        empty_url: str, left_out: tuple[str, ...], stamped: str) -> None:
    # What get_engine's create_all made until migrations came: the tables as of 0006 (the last revision such a
    # database can match; today's models have 0007's too), without alembic_version and the tables left out.
    upgrade(empty_url, "0006")
    with get_engine(empty_url).begin() as conn:
        for table in ("alembic_version", *left_out):
            conn.execute(text(f"DROP TABLE {table}"))
    done = upgrade(empty_url)
    assert (done.before, done.stamped, done.after) == (None, stamped, head())
    assert _differences(empty_url) == []


@pytest.mark.postgres
def test_postgres_columns_are_timestamptz_and_bigint(empty_postgres_url: str) -> None:
    _previous_release(empty_postgres_url)
    upgrade(empty_postgres_url)
    insp = inspect(get_engine(empty_postgres_url))
    for table in Base.metadata.sorted_tables:
        for column in insp.get_columns(table.name):
            if isinstance(column["type"], DateTime):
                assert column["type"].timezone, f"{table.name}.{column['name']} is a timestamp without time zone"
    assert isinstance({c["name"]: c["type"] for c in insp.get_columns("datasets")}["size_bytes"], BigInteger)


def test_every_timestamp_is_timezone_aware_and_every_size_64_bit() -> None:
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, DateTime):
                assert column.type.timezone, f"{table.name}.{column.name}: DateTime(timezone=True)"
            if column.name.endswith("bytes"):
                assert isinstance(column.type, BigInteger), f"{table.name}.{column.name}: BigInteger"


def test_downgrade_to_nothing_and_up_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'graft.db'}"
    upgrade(url)
    with get_engine(url).begin() as conn:
        command.downgrade(alembic_config(url, conn), "base")
        assert set(inspect(conn).get_table_names()) == {"alembic_version"}
    assert upgrade(url).after == head() and _differences(url) == []
    get_engine(url).dispose()


def test_upgraders_at_once_take_turns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'graft.db'}"
    results = at_once(lambda _: upgrade(url), 3)
    assert sorted(r.before or "" for r in results) == ["", head(), head()]  # one created it, two found it done
    get_engine(url).dispose()


def _behind(url: str) -> None:
    with get_engine(url).begin() as conn:
        command.upgrade(alembic_config(url, conn), "0003")


def test_the_api_refuses_a_schema_that_is_behind(tmp_path: Path) -> None:
    from graft.api import create_app

    url = f"sqlite:///{tmp_path / 'graft.db'}"
    with pytest.raises(SchemaOutOfDate, match=r"is empty, this Graft needs revision \d+: run `graft db upgrade`"):
        create_app(Config(database_url=url, artifacts_dir=tmp_path))
    _behind(url)
    with pytest.raises(SchemaOutOfDate, match="is at revision 0003.*run `graft db upgrade`"):
        create_app(Config(database_url=url, artifacts_dir=tmp_path))
    with get_engine(url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaOutOfDate, match="9999, which this Graft .* does not know"):
        create_app(Config(database_url=url, artifacts_dir=tmp_path))
    get_engine(url).dispose()


def test_graft_db_upgrade_says_what_it_did_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "GRAFT_DATABASE_URL": f"sqlite:///{tmp_path / 'graft.db'}"}
    done = subprocess.run([sys.executable, "-m", "graft.cli.main", "db", "upgrade"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("upgraded the database from empty to ") and done.stdout.count("\n") == 1
    assert done.stderr == "", done.stderr  # no migration-by-migration log lines


def test_graft_api_and_graft_worker_refuse_to_start_on_a_schema_that_is_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'graft.db'}"
    _previous_release(url)
    env = {**os.environ, "GRAFT_DATABASE_URL": url, "GRAFT_REDIS_URL": "redis://127.0.0.1:1/0",  # never reached
           "GRAFT_API_TOKENS": "t"}
    for argv in (["api", "--port", "1"], ["worker", "--name", "never"]):
        done = subprocess.run([sys.executable, "-m", "graft.cli.main", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        assert "graft: the database schema has tables from before migrations" in done.stderr
        assert "run `graft db upgrade`" in done.stderr
    get_engine(url).dispose()


def test_auto_upgrade_upgrades_at_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'graft.db'}"
    _previous_release(url)
    ensure_schema(Config(database_url=url, db_auto_upgrade=True))
    check_schema(url)
    assert Config.from_env({"GRAFT_DB_AUTO_UPGRADE": "1"}).db_auto_upgrade
    assert not Config.from_env({}).db_auto_upgrade
    get_engine(url).dispose()
