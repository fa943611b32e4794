"""The HTTP contract: schemathesis calls every operation of /api/v1/openapi.json on a real `graft api` process.

The server runs on real Redis and PostgreSQL (a private schema and queue, no worker: what is queued stays
queued). Before the run the database holds one object of every kind (a queued and a finished train job, a model
with a file, a finished predict job with rows, a ready dataset, an upload), and schemathesis draws ids and folders
from them half of the time, so the generated requests reach the handlers' real work and not only their 404s.
Checks: all of schemathesis's (`--checks all`, as a user's CI would run it): no 5xx; every status, content type,
header and body as the spec says; a request the spec calls invalid is refused; one it calls valid is accepted; a
method the spec lacks is a 405 with a true Allow; a missing or wrong token is a 401. Nothing is excluded. Where a
schema-valid request may rightly be a 400 for a rule about content or server state that OpenAPI cannot state
(CONTENT_RULES: an archive that is not one, two files of one name, a callback its owner cannot sign, results of a
train job), that operation's positive check also accepts 400, and the table says why.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import redis
import requests
from sqlalchemy import create_engine, text

from graft.shared import lifecycle
from graft.shared.db import session_scope
from graft.shared.models import READY, DatasetRecord, PredictionResult, TrainedModel, new_id
from graft.shared.schema import upgrade
from graft.shared.storage import model_dir
from graft.shared.uploads import upload_dir
from tests.helpers import POSTGRES_URL, TOKEN, api_process

log = logging.getLogger(__name__)
CHECKS = "all"  # as a user's CI would run it
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # positive_data_acceptance's own list
# Where a schema-valid request may still be a 400: rules about content or server state that OpenAPI cannot state.
CONTENT_RULES = [
    ("POST", "/api/v1/datasets", "the file must be a readable zip or tar archive"),
    ("POST", "/api/v1/uploads", "two files may not share a name, nor one be another's folder"),
    ("POST", "/api/v1/uploads/{upload_id}", "as above, and not a name the upload already holds"),
    ("POST", "/api/v1/jobs/train", "callback_url needs its owner's webhook secret and a public address"),
    ("POST", "/api/v1/jobs/predict", "as above"),
    ("GET", "/api/v1/jobs/{job_id}/results", "only a predict job has results (the path does not say the kind)"),
    ("GET", "/api/v1/jobs/{job_id}/results/thumbnail", "as above"),
]
MAX_EXAMPLES = 12  # with the coverage phase's own cases, about 2,000 requests in ~20 s on 2 cores
SEED = 7  # a fixed seed: the same requests on every run, so a failure here is never a fluke of the draw


@pytest.fixture(scope="module")
def contract_db() -> Iterator[str]:
    """A private PostgreSQL schema (PostgreSQL refuses what SQLite lets through, such as NUL characters)."""
    schema = f"graft_contract_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_URL, pool_pre_ping=True)  # another test restarts PostgreSQL
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not usable: {exc}")
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    upgrade(url)  # as `graft db upgrade` would: the seed below writes before the API starts
    yield url
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(scope="module")
def contract_env(service_env: dict[str, str], contract_db: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[dict[str, str]]:
    """The session's settings with a private database, artifacts, data root and queue (no worker consumes it)."""
    base = tmp_path_factory.mktemp("contract")
    queue = f"graft-contract-{uuid.uuid4().hex[:8]}"
    env = {**service_env, "GRAFT_DATABASE_URL": contract_db, "GRAFT_ARTIFACTS_DIR": str(base / "artifacts"),
           "GRAFT_DATA_ROOTS": str(base / "data"), "GRAFT_QUEUE": queue,
           "GRAFT_SYNC_PREDICT_WAIT_SECONDS": "1"}  # the synchronous endpoints answer 202 after 1 s, not 30
    yield env
    client = redis.Redis.from_url(env["GRAFT_REDIS_URL"])
    for key in client.scan_iter(f"*{queue}*"):  # the messages nobody consumed, and kombu's bindings
        client.delete(key)
    client.close()


def _seed(env: dict[str, str]) -> dict[str, list[str]]:
    """One object of every kind; returns the values schemathesis may draw, by dictionary name."""
    artifacts, data = Path(env["GRAFT_ARTIFACTS_DIR"]), Path(env["GRAFT_DATA_ROOTS"])
    for name in ("a/1.png", "a/2.png", "b/1.png", "b/2.png"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"\x89PNG never decoded: no worker runs")
    upload = new_id()
    upload_dir(artifacts, upload).mkdir(parents=True)
    (upload_dir(artifacts, upload) / "x.jpg").write_bytes(b"x")
    with session_scope(env["GRAFT_DATABASE_URL"]) as session:
        queued = lifecycle.create_job(session, "train", {"data_dir": str(data)})
        trained = lifecycle.create_job(session, "train", {"data_dir": str(data)})
        trained.status = lifecycle.SUCCEEDED
        model_id = new_id()
        weights = model_dir(artifacts, model_id) / "model.pt"
        weights.parent.mkdir(parents=True)
        weights.write_bytes(b"never loaded by the API")
        model = TrainedModel(id=model_id, job_id=trained.id, backbone="resnet18", classes=["a", "b"],
                             image_size=64, metrics={"val_acc": 1.0}, path=str(weights))
        dataset = DatasetRecord(id=new_id(), name="shapes", source="path", path=str(data), status=READY,
                                classes={"a": 2, "b": 2}, num_images=4, report={"issues": [], "layout": "folders"})
        predicted = lifecycle.create_job(session, "predict", {"model_id": model.id, "upload_id": upload, "top_k": 2})
        predicted.status = lifecycle.SUCCEEDED
        predicted.metrics = {"summary": {"files": 2, "labels": {"a": 1}, "unknown": 0, "errors": 1}}
        session.add_all([
            model,
            PredictionResult(job_id=predicted.id, chunk=0, path="1.jpg", label="a", confidence=0.9,
                             top_k=[{"label": "a", "confidence": 0.9}, {"label": "b", "confidence": 0.1}]),
            PredictionResult(job_id=predicted.id, chunk=0, path="2.jpg", error="not an image"),
            dataset,
        ])
        return {"job": [queued.id, trained.id, predicted.id], "model": [model_id], "dataset": [dataset.id],
                "upload": [upload], "folder": [str(data)]}


def _config(values: dict[str, list[str]], path: Path) -> Path:
    """A schemathesis.toml that draws each id (and server folder) from the seeded objects half of the time."""
    uses = {"path.job_id": "job", "path.model_id": "model", "path.dataset_id": "dataset", "path.upload_id": "upload",
            "body.model_id": "model", "body.dataset_id": "dataset", "body.upload_id": "upload",
            "body.data_dir": "folder", "body.input_dir": "folder", "body.path": "folder"}
    lines = []
    for name, items in values.items():
        lines += [f"[dictionaries.{name}]", "values = [" + ", ".join(f'"{v}"' for v in items) + "]", ""]
    lines.append("[parameters]")
    lines += [f'"{key}" = {{ dictionary = "{name}", probability = 0.5 }}' for key, name in uses.items()]
    for method, route, _why in CONTENT_RULES:
        lines += ["", "[[operations]]", f'include-name = "{method} {route}"',
                  f"checks.positive_data_acceptance.expected-statuses = {json.dumps([*ACCEPTED, '400'])}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def contract_server(contract_env: dict[str, str]) -> Iterator[tuple[str, dict[str, list[str]]]]:
    """`graft api` on the seeded database; yields its URL and the seeded values."""
    values = _seed(contract_env)
    with api_process(contract_env) as (url, _proc):
        yield url, values


def test_every_operation_keeps_the_contract(contract_server: tuple[str, dict[str, list[str]]],
                                            tmp_path: Path) -> None:
    url, values = contract_server
    config = _config(values, tmp_path / "schemathesis.toml")
    spec = requests.get(f"{url}/api/v1/openapi.json", timeout=10).json()
    operations = sum(m in ("get", "post", "put", "patch", "delete") for item in spec["paths"].values() for m in item)
    # From a file: loaded from its URL, schemathesis would leave the document's own operation out.
    (tmp_path / "openapi.json").write_text(json.dumps(spec))
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", "openapi.json",
         "--url", url, "--header", f"Authorization: Bearer {TOKEN}", "--checks", CHECKS,
         "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--seed", str(SEED), "--no-shrink",
         "--request-timeout", "20"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"},
    )
    seconds = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-12000:]
    assert f"{operations} selected / {operations} total" in output, output[-3000:]  # none left out
    assert f"Tested: {operations}" in output, output[-3000:]  # ... nor skipped
    log.info("schemathesis: %d operations in %.0f s", operations, seconds)  # the figure the 60 s budget is about


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/api/v1/jobs/a%00b", None),
    ("GET", "/api/v1/models?job_id=a%00b", None),
    ("POST", "/api/v1/jobs/predict", {"model_id": "a\x00b", "input_dir": "x"}),
    ("POST", "/api/v1/jobs/train", {"data_dir": "/tmp/a\x00b"}),
    ("POST", "/api/v1/datasets", {"path": "/tmp", "name": "a\x00b"}),
])
def test_nul_characters_are_refused_not_a_500(contract_server: tuple[str, dict[str, list[str]]], method: str,
                                              path: str, body: dict | None) -> None:
    """PostgreSQL cannot hold or compare NUL: the schemas refuse it (400), a path with one matches nothing (404)."""
    url, _ = contract_server
    response = requests.request(method, f"{url}{path}", json=body, headers={"Authorization": f"Bearer {TOKEN}"},
                                timeout=10)
    assert response.status_code in (400, 404), response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "NUL" in response.json()["error"] or response.status_code == 404
