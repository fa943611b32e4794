"""A PostgreSQL restart in the middle of training: the job's writes wait the outage out and it succeeds."""
from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from graft.cli.sampledata import make_shapes_dataset
from tests.helpers import WorkerProcess, api_client, wait_for_job


def _local_cluster() -> list[str] | None:
    """[version, name] of the local cluster on port 5432 that this machine may restart, or None."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return None
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "5432" and fields[3] == "online":
            return fields[:2]
    return None


CLUSTER = _local_cluster()
pytestmark = [pytest.mark.postgres, pytest.mark.serial,
              pytest.mark.skipif(CLUSTER is None, reason="no local PostgreSQL cluster on 5432 that this test may restart")]


def _pg_ctl(action: str) -> None:
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *CLUSTER, action], check=True, timeout=60,
                   capture_output=True)


def test_postgres_restart_during_training_does_not_fail_the_job(postgres_url: str, service_env: dict[str, str],
                                                                 data_root: Path, tmp_path: Path) -> None:
    env = {**service_env, "GRAFT_DATABASE_URL": postgres_url, "GRAFT_QUEUE": f"graft-pg-{uuid.uuid4().hex[:6]}",
           "GRAFT_LEASE_SECONDS": "30"}
    dataset = make_shapes_dataset(data_root / "pg-outage", per_class=30, size=96)
    client = api_client(env)
    worker = WorkerProcess(env, f"pg-{uuid.uuid4().hex[:6]}", tmp_path / "worker.log")
    try:
        worker.wait_ready()
        body = {"data_dir": str(dataset), "backbone": "resnet18", "pretrained": False, "image_size": 96,
                "batch_size": 8, "epochs": 4}
        job_id = client.post("/api/v1/jobs/train", json=body).get_json()["id"]
        deadline = time.monotonic() + 120
        while not client.get(f"/api/v1/jobs/{job_id}").get_json()["metrics"]["history"]:
            assert time.monotonic() < deadline, "epoch 1 did not finish"
            time.sleep(0.2)
        # Down for longer than a lease beat (2 s), so the worker surely meets the outage; then back.
        _pg_ctl("stop")
        try:
            time.sleep(4)
        finally:
            _pg_ctl("start")
        job = wait_for_job(client, job_id, timeout=180)
        log = worker.log_path.read_text(errors="replace")  # whole: the outage's tracebacks are long
        assert job["status"] == "succeeded" and job["attempts"] == 1, (job, log[-6000:])
        assert [h["epoch"] for h in job["metrics"]["history"]] == [1, 2, 3, 4]
        assert "lease renewal failed" in log or "database unreachable" in log  # the outage really reached it
    finally:
        worker.stop()
