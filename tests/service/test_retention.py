"""Retention as a service: the workers' periodic pass, 507 for uploads on a nearly full disk, /healthz's disk."""
from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

from graft.shared.config import Config
from graft.shared.db import session_scope
from graft.shared.lifecycle import create_job
from graft.shared.models import new_id
from graft.shared.schema import upgrade
from tests.helpers import TOKEN, WorkerProcess, api_client


def _upload(client):  # noqa: ANN001, ANN202
    return client.post("/api/v1/uploads", data={"file": (io.BytesIO(b"not really a jpeg"), "a.jpg")},
                       content_type="multipart/form-data")


def test_uploads_refused_with_507_while_the_disk_is_nearly_full(service_env: dict[str, str]) -> None:
    full = api_client({**service_env, "GRAFT_MIN_FREE_MB": str(10**9)})  # "keep a petabyte free": never true here
    refused = _upload(full)
    assert refused.status_code == 507 and "nearly full" in refused.get_json()["error"], refused.get_json()
    assert refused.get_json()["free_bytes"] > 0
    full.environ_base.pop("HTTP_AUTHORIZATION")
    assert _upload(full).status_code == 401  # strangers learn nothing about the disk
    full.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    assert full.post("/api/v1/jobs/train", json={"epochs": "x"}).status_code == 400  # JSON requests go on as usual
    assert full.get("/healthz").get_json()["disk"]["uploads_refused"] is True

    roomy = api_client(service_env)
    health = roomy.get("/healthz").get_json()
    assert health["disk"]["uploads_refused"] is False and health["disk"]["artifacts_free_bytes"] > 0
    accepted = _upload(roomy)
    assert accepted.status_code == 201, accepted.get_json()


def test_workers_run_the_retention_pass(service_env: dict[str, str], tmp_path: Path) -> None:
    base = tmp_path / "server"
    env = {**service_env, "GRAFT_DATABASE_URL": f"sqlite:///{base / 'graft.db'}", "GRAFT_ARTIFACTS_DIR": str(base / "art"),
           "GRAFT_QUEUE": f"graft-gc-{uuid.uuid4().hex[:6]}", "GRAFT_SWEEP_SECONDS": "1",
           "GRAFT_GC_INTERVAL_SECONDS": "1", "GRAFT_GC_UPLOAD_SECONDS": "0"}
    config = Config.from_env(env)
    upgrade(config.database_url)
    used, unused = new_id(), new_id()
    with session_scope(config.database_url) as session:  # queued, never sent: the upload must stay
        create_job(session, "predict", {"model_id": new_id(), "upload_id": used})
    for upload_id in (used, unused):
        folder = Path(config.artifacts_dir) / "uploads" / upload_id
        folder.mkdir(parents=True)
        (folder / "a.jpg").write_bytes(b"x")
    worker = WorkerProcess(env, f"gc-{uuid.uuid4().hex[:6]}", tmp_path / "worker.log")
    try:
        worker.wait_ready()
        deadline = time.monotonic() + 30
        # The pass logs once it has committed (the removed upload's row goes with it): wait for both.
        while ((Path(config.artifacts_dir) / "uploads" / unused).exists()
               or "retention pass: removed" not in worker.log_tail()):
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.2)
        assert (Path(config.artifacts_dir) / "uploads" / used).is_dir()
        assert "retention pass: removed 1 folder(s)" in worker.log_tail()
    finally:
        worker.stop()
