"""Retention (`graft gc`): a folder with each kind of leftover, and each kind of thing in use, on SQLite."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graft.shared.config import Config
from graft.shared.db import get_engine, session_scope
from graft.shared.lifecycle import CANCELLED, FAILED, RUNNING, SUCCEEDED, create_job, transition
from graft.shared.models import DatasetRecord, TrainedModel, new_id
from graft.shared.retention import collect
from graft.shared.schema import upgrade
from tests.helpers import ROOT

OLD = 10 * 24 * 3600  # older than every default age


def _folder(path: Path, age_s: float = 0, files: int = 2) -> Path:
    path.mkdir(parents=True)
    for i in range(files):
        (path / f"f{i}.bin").write_bytes(b"x" * 1000)
    if age_s:
        stamp = time.time() - age_s
        for item in [*path.rglob("*"), path]:
            os.utime(item, (stamp, stamp))
    return path


def _job(url: str, statuses: list[str], **params: object) -> str:
    with session_scope(url) as session:
        job = create_job(session, "predict" if "upload_id" in params else "train", {"data_dir": "/d", **params})
        for status in statuses:
            transition(session, job, status)
        return job.id


@pytest.fixture()
def server(tmp_path: Path) -> tuple[Config, dict[str, list[Path]]]:
    """An artifacts folder and database holding one of everything: what gc must remove, and what it must keep."""
    config = Config.from_env({"GRAFT_DATABASE_URL": f"sqlite:///{tmp_path / 'graft.db'}",
                              "GRAFT_ARTIFACTS_DIR": str(tmp_path / "artifacts")})
    url, art = config.database_url, Path(config.artifacts_dir)
    upgrade(url)
    uploads, jobs, models = art / "uploads", art / "jobs", art / "models"
    queued_upload, running_upload, finished_upload = new_id(), new_id(), new_id()
    queued_job = _job(url, [], upload_id=queued_upload)
    running_job = _job(url, [RUNNING], upload_id=running_upload)
    succeeded, failed, cancelled = _job(url, [RUNNING, SUCCEEDED]), _job(url, [FAILED]), _job(url, [CANCELLED])
    _job(url, [RUNNING, SUCCEEDED], upload_id=finished_upload)
    model_id, dataset_id = new_id(), new_id()
    with session_scope(url) as session:
        session.add(TrainedModel(id=model_id, job_id=succeeded, backbone="resnet18", classes=["a", "b"], image_size=64,
                                 metrics={}, path=str(models / model_id / "model.pt")))
        session.add(DatasetRecord(id=dataset_id, name="d", source="upload", path=str(art / "datasets" / dataset_id),
                                  status="ready"))
    leftovers = [
        _folder(uploads / new_id(), OLD),  # an upload no job ever used
        _folder(uploads / finished_upload, OLD),  # its job finished, but the release was lost in a crash
        _folder(art / "datasets" / ".staging" / new_id(), OLD),  # a dataset upload that died mid-request
        _folder(jobs / succeeded, OLD), _folder(jobs / failed), _folder(jobs / cancelled),  # finished jobs' checkpoints
        _folder(jobs / new_id(), OLD),  # checkpoints of a job that no longer exists
        _folder(models / new_id(), OLD),  # a model saved by an attempt that lost its lease: no row
    ]
    keep = [
        _folder(uploads / queued_upload, OLD), _folder(uploads / running_upload, OLD),  # in use
        _folder(uploads / new_id()),  # young: someone may be about to submit a job on it
        _folder(art / "datasets" / ".staging" / new_id()),  # an upload streaming right now
        _folder(art / "datasets" / dataset_id, OLD),  # datasets are deleted by their users, never by gc
        _folder(jobs / running_job, OLD), _folder(jobs / queued_job, OLD),  # a running or re-queued job's checkpoint
        _folder(jobs / new_id()),  # young: a job row may be on its way
        _folder(models / model_id, OLD),  # a model with its row
        _folder(models / new_id()),  # young: its job is recording the row now
    ]
    get_engine(url).dispose()
    return config, {"leftovers": leftovers, "keep": keep}


def _relative(config: Config, paths: list[Path]) -> list[str]:
    return sorted(str(p.relative_to(config.artifacts_dir)) for p in paths)


def test_collect_removes_exactly_the_leftovers(server: tuple[Config, dict[str, list[Path]]]) -> None:
    config, tree = server
    with session_scope(config.database_url) as session:
        dry = collect(session, config, dry_run=True)
    assert sorted(dry.removed) == _relative(config, tree["leftovers"])
    assert all(p.exists() for p in tree["leftovers"])  # a dry run removes nothing
    with session_scope(config.database_url) as session:
        report = collect(session, config)
    assert sorted(report.removed) == _relative(config, tree["leftovers"])
    assert report.freed_bytes == 2000 * len(tree["leftovers"])
    assert not any(p.exists() for p in tree["leftovers"])
    assert all(p.exists() for p in tree["keep"])
    with session_scope(config.database_url) as session:
        assert collect(session, config).removed == []  # a second pass finds nothing


def test_checkpoints_of_finished_jobs_can_be_kept(server: tuple[Config, dict[str, list[Path]]]) -> None:
    config, tree = server
    with session_scope(config.database_url) as session:
        removed = collect(session, config.replace(gc_keep_checkpoints=True)).removed
    finished = [p for p in tree["leftovers"] if p.parent.name == "jobs" and p.name in _job_ids(config)]
    assert len(finished) == 3 and all(p.exists() for p in finished)
    assert sorted(removed) == _relative(config, [p for p in tree["leftovers"] if p not in finished])


def _job_ids(config: Config) -> set[str]:
    from sqlalchemy import select

    from graft.shared.models import Job

    with session_scope(config.database_url) as session:
        return set(session.scalars(select(Job.id)))


def test_graft_gc_command(server: tuple[Config, dict[str, list[Path]]]) -> None:
    config, tree = server
    env = {**os.environ, "GRAFT_DATABASE_URL": config.database_url, "GRAFT_ARTIFACTS_DIR": str(config.artifacts_dir)}
    done = subprocess.run([sys.executable, "-m", "graft.cli.main", "gc", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert sorted(report["removed"]) == _relative(config, tree["leftovers"]) and report["dry_run"] is False
    assert not any(p.exists() for p in tree["leftovers"]) and all(p.exists() for p in tree["keep"])
