"""A really full disk: the artifacts folder on a small tmpfs. A job that cannot write its checkpoint fails with a
clear reason and leaves no half-written file; uploads are refused with 507 by the real free space."""
from __future__ import annotations

import io
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from graft.cli.sampledata import make_shapes_dataset
from tests.helpers import WorkerProcess, api_client, private_env, wait_for_job

SIZE_MB = 8  # far less than a ResNet-18 checkpoint (~90 MB with its optimizer state)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A SIZE_MB tmpfs, or a skip where this machine may not mount one (not root, no CAP_SYS_ADMIN)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.both_databases
def test_full_disk_fails_the_job_cleanly_and_refuses_uploads(small_disk: Path, service_env: dict[str, str],
                                                             data_root: Path, tmp_path: Path) -> None:
    env = private_env(service_env, tmp_path, "graft-disk", GRAFT_ARTIFACTS_DIR=str(small_disk / "artifacts"),
                      GRAFT_MIN_FREE_MB="1")
    client = api_client(env)
    data = make_shapes_dataset(data_root / "disk-full", per_class=6, size=64)
    worker = WorkerProcess(env, f"disk-{uuid.uuid4().hex[:6]}", tmp_path / "worker.log")
    try:
        worker.wait_ready()
        body = {"data_dir": str(data), "backbone": "resnet18", "pretrained": False, "image_size": 64, "epochs": 2,
                "batch_size": 8, "mode": "full"}
        job = wait_for_job(client, client.post("/api/v1/jobs/train", json=body).get_json()["id"], timeout=120)
        assert job["status"] == "failed" and "disk is full" in job["error"], (job, worker.log_tail())
        assert job["attempts"] == 1  # a full disk is not a lost worker: no retry loop
        leftovers = [p.name for p in (small_disk / "artifacts").rglob("*.tmp")]
        assert leftovers == []  # the failed write removed its temp file
        assert worker.proc.poll() is None  # the worker lives on

        # Fill the disk to under GRAFT_MIN_FREE_MB: uploads are refused by the real free space.
        free = shutil.disk_usage(small_disk).free
        (small_disk / "filler").write_bytes(b"\0" * (free - 256 * 1024))
        refused = client.post("/api/v1/uploads", data={"file": (io.BytesIO(b"x"), "a.jpg")},
                              content_type="multipart/form-data")
        assert refused.status_code == 507 and "nearly full" in refused.get_json()["error"]
        (small_disk / "filler").unlink()
        accepted = client.post("/api/v1/uploads", data={"file": (io.BytesIO(b"x"), "a.jpg")},
                               content_type="multipart/form-data")
        assert accepted.status_code == 201, accepted.get_json()
    finally:
        worker.stop()
