"""What operators and users can see: a job's own log lines through the API and the CLI, and /metrics."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from graft.cli.sampledata import make_shapes_dataset
from tests.helpers import ROOT, TOKEN, wait_for_job

TINY = {"backbone": "resnet18", "pretrained": False, "image_size": 64, "epochs": 2, "batch_size": 8}


def test_a_jobs_log_lines_through_the_api_and_the_cli(client, worker, data_root: Path, http_app: str,  # noqa: ANN001
                                                      service_config) -> None:  # noqa: ANN001
    data = make_shapes_dataset(data_root / "observed", per_class=8, size=64)
    job = wait_for_job(client, client.post("/api/v1/jobs/train", json={"data_dir": str(data), **TINY}).get_json()["id"])
    assert job["status"] == "succeeded", job["error"]
    lines = client.get(f"/api/v1/jobs/{job['id']}/logs").get_json()["items"]
    messages = [line["message"] for line in lines]
    assert any(m.startswith("epoch 1/2") for m in messages) and any(m.startswith("epoch 2/2") for m in messages)
    assert not any("{" in m for m in messages), messages  # sentences, not Python reprs
    assert all(line["level"] in ("INFO", "WARNING", "ERROR") and line["worker"] for line in lines)
    assert not any(str(service_config.artifacts_dir) in m for m in messages)  # Graft's own folders stay private
    # A cursor for tailing: the lines after the first, one per page.
    first = lines[0]["id"]
    page = client.get(f"/api/v1/jobs/{job['id']}/logs?after={first}&limit=1").get_json()
    assert [line["id"] for line in page["items"]] == [lines[1]["id"]] and page["next"]
    assert client.get("/api/v1/jobs/nope/logs").status_code == 404
    assert client.get(f"/api/v1/jobs/{job['id']}/logs?limit=0").status_code == 400

    env = {**os.environ, "GRAFT_URL": http_app, "GRAFT_TOKEN": TOKEN}
    shown = subprocess.run([sys.executable, "-m", "graft.cli.main", "jobs", "logs", job["id"]], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "queued -> running" in shown.stdout and "epoch 2/2" in shown.stdout


def test_metrics_for_prometheus(client, worker) -> None:  # noqa: ANN001
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    succeeded = re.search(r'^graft_jobs\{kind="train",status="succeeded"\} (\d+)', text, re.M)
    assert succeeded and int(succeeded.group(1)) >= 1, text
    for name in ("graft_oldest_queued_job_age_seconds", "graft_workers_running_jobs", "graft_artifacts_free_bytes",
                 'graft_queue_depth{queue="train"}', 'graft_job_duration_seconds_bucket{kind="train",le="+Inf"}'):
        assert name in text, name
    client.environ_base.pop("HTTP_AUTHORIZATION")
    try:
        assert client.get("/metrics").status_code == 401  # closed like the rest of the API
    finally:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
