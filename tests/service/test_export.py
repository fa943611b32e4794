"""Model downloads end to end: a real efficientnet_lite0 model trained on hymenoptera, each format exported by a real
worker, downloaded through the API, run with its own runtime by the zip's README snippet, and compared with Graft.
Then how exports are admitted, on a real `graft api` and worker: one build per model and format however many ask at
once (each answered 202 at once), the owner's storage quota, a bound on each user's waiting builds, failures kept."""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import redis
import requests

from graft.shared import export_builds, lifecycle, users
from graft.shared.db import session_scope
from graft.shared.exports import EXPORT_FORMATS, export_zip
from graft.shared.models import TrainedModel
from tests.helpers import HYMENOPTERA, ROOT, TOKEN, api_process, at_once, model_file, wait_for_job


MODEL_FILES = {"onnx": ["model.onnx"], "torchscript": ["model.torchscript.pt"], "openvino": ["model.xml", "model.bin"],
               "pt": ["model.pt2"]}
DOCUMENTS = ["README.md", "labels.json", "metrics.json", "preprocessing.json"]
PER_CLASS = 20  # 40 val images


@pytest.fixture(scope="module")
def model(app, worker) -> dict:  # noqa: ANN001
    """One small model trained through the service: efficientnet_lite0 (weights ship offline), linear, 128 px."""
    if not HYMENOPTERA.is_dir():
        pytest.skip("hymenoptera data set not present")
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    body = {"data_dir": str(HYMENOPTERA), "backbone": "efficientnet_lite0", "mode": "linear", "image_size": 128,
            "epochs": 2, "batch_size": 32, "views": 0}  # no augmented views: the feature cache is the slow part
    job = wait_for_job(client, client.post("/api/v1/jobs/train", json=body).get_json()["id"], timeout=600)
    assert job["status"] == "succeeded", job["error"]
    return client.get(f"/api/v1/models/{job['model_id']}").get_json()


@pytest.fixture(scope="module")
def images() -> list[Path]:
    """The first 20 ants and 20 bees of the validation split."""
    return [p for name in ("ants", "bees") for p in sorted((HYMENOPTERA / "val" / name).glob("*.jpg"))[:PER_CLASS]]


@pytest.fixture(scope="module")
def graft_probabilities(model: dict, images: list[Path], service_config) -> np.ndarray:  # noqa: ANN001
    """Graft's own prediction for the images: the worker's Predictor (default runtime) on the model artifact."""
    from graft.worker.core.images import decode_image
    from graft.worker.core.predict import Predictor

    predictor = Predictor.from_artifact(model_file(service_config.artifacts_dir, model["id"]))
    decoded = [decode_image(path, predictor.prep.resize) for path in images]
    return predictor.probabilities(decoded).numpy()


def _download(client, model_id: str, fmt: str, timeout: float = 240):  # noqa: ANN001, ANN202
    """GET the download, following 202 "exporting" answers until the zip comes (the caller closes the response)."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/api/v1/models/{model_id}/download?format={fmt}")
        if response.status_code != 202:
            return response
        body = response.get_json()
        assert body["status"] in ("queued", "building")
        assert int(response.headers["Retry-After"]) == body["retry_after_s"]
        assert time.monotonic() < deadline, f"{fmt} export not ready after {timeout}s"
        time.sleep(1)


def _unzip(response, folder: Path) -> list[str]:  # noqa: ANN001
    try:
        data = response.get_data()
    finally:
        response.close()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(folder)
        return sorted(archive.namelist())


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_reproduces_graft(client, model: dict, images: list[Path], fmt: str,  # noqa: ANN001
                                 graft_probabilities: np.ndarray, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import json

    from graft.worker.core.runtimes import import_openvino

    response = _download(client, model["id"], fmt)
    assert response.status_code == 200, response.get_json()
    assert response.mimetype == "application/zip"
    assert f"graft-model-{model['id']}-{fmt}.zip" in response.headers["Content-Disposition"]
    assert _unzip(response, tmp_path) == sorted(MODEL_FILES[fmt] + DOCUMENTS)
    assert json.loads((tmp_path / "labels.json").read_text()) == model["classes"] == ["ants", "bees"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == model["metrics"]
    prep = json.loads((tmp_path / "preprocessing.json").read_text())
    assert (prep["resize_short_side"], prep["centre_crop"], prep["input"]["layout"]) == (147, 128, "NHWC")

    # Run the README's own snippet, from the unzipped folder, with this format's runtime alone.
    code = re.findall(r"```python\n(.*?)```", (tmp_path / "README.md").read_text(), re.S)[0]
    import_openvino()  # the snippet's `import openvino` then finds OpenVINO loaded with its telemetry off
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PyTorch deprecates TorchScript; the format is still asked for
        exec(code, namespace)  # noqa: S102 - the README's own code
    got = namespace["predict"]([str(path) for path in images])
    assert got.shape == graft_probabilities.shape == (len(images), 2)
    assert (got.argmax(1) == graft_probabilities.argmax(1)).all()
    assert np.abs(got - graft_probabilities).max() < 1e-3


def test_second_download_is_served_from_the_cache(client, model: dict, service_config) -> None:  # noqa: ANN001
    _download(client, model["id"], "pt").close()
    cached = export_zip(service_config.artifacts_dir, model["id"], "pt")
    before = cached.stat().st_mtime_ns
    started = time.monotonic()
    response = client.get(f"/api/v1/models/{model['id']}/download?format=pt")
    try:
        assert response.status_code == 200 and response.get_data() == cached.read_bytes()
    finally:
        response.close()
    assert time.monotonic() - started < 5 and cached.stat().st_mtime_ns == before  # a file send, no new export


def test_bad_downloads(client, model: dict) -> None:  # noqa: ANN001
    for query in ("?format=tflite", "?format=", ""):
        response = client.get(f"/api/v1/models/{model['id']}/download{query}")
        assert response.status_code == 400 and response.get_json()["field"] == "format", query
    response = client.get(f"/api/v1/models/{uuid.uuid4().hex}/download?format=onnx")
    assert response.status_code == 404 and "error" in response.get_json()


def test_model_resource_shows_no_server_path(client, model: dict) -> None:  # noqa: ANN001
    assert "path" not in model
    listed = client.get("/api/v1/models").get_json()["items"]
    assert listed and all("path" not in item for item in listed)


# ---- admission: one build per export, 202 at once, the owner's quota, bounded waits, failures kept ---------------

FAST = "torchscript"  # the quickest format to build (seconds): these tests are about admission, not the formats


@dataclass
class World:
    """A real `graft api` on the session's database, queue and worker; users' tokens and ids; their models."""

    url: str
    env: dict[str, str]
    tokens: dict[str, str]
    user_ids: dict[str, str]
    models: dict[str, str]


def _add_model(config, owner_id: str | None, artifact: Path | None) -> str:  # noqa: ANN001
    """A model row owned by owner_id whose model.pt is a copy of artifact (None: a file that is no model)."""
    model_id = uuid.uuid4().hex
    weights = model_file(config.artifacts_dir, model_id)
    weights.parent.mkdir(parents=True)
    if artifact is None:
        weights.write_bytes(b"not a model")
    else:
        shutil.copyfile(artifact, weights)
    with session_scope(config.database_url) as session:
        job = lifecycle.create_job(session, "train", {"note": "made by the test"}, owner_id=owner_id)
        session.add(TrainedModel(id=model_id, job_id=job.id, owner_id=owner_id, backbone="efficientnet_lite0",
                                 classes=["a", "b"], image_size=32, metrics={}, path=str(weights),
                                 size_bytes=weights.stat().st_size))
    return model_id


@pytest.fixture(scope="module")
def world(service_env: dict[str, str], service_config, worker, tmp_path_factory) -> Iterator[World]:  # noqa: ANN001
    """alice (two models and a broken one), bob (one) and carol (one, and a 20 MB quota) on a real `graft api`."""
    import torch

    from graft.worker.core.backbones import build_model
    from graft.worker.core.checkpoint import save_model_artifact
    from graft.worker.core.transforms import Preprocessing

    torch.manual_seed(0)
    prep = Preprocessing.for_size(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    artifact = save_model_artifact(tmp_path_factory.mktemp("tiny"), build_model("efficientnet_lite0", 2,
                                   pretrained=False).eval(), {"backbone": "efficientnet_lite0", "classes": ["a", "b"],
                                   "image_size": 32, "preprocessing": prep.to_dict(), "metrics": {}})  # 13 MB
    suffix = uuid.uuid4().hex[:6]
    tokens, user_ids = {}, {}
    with session_scope(service_config.database_url) as session:
        for name, storage_mb in (("alice", None), ("bob", None), ("carol", 20)):
            user = users.add_user(session, f"{name}-{suffix}", max_storage_mb=storage_mb)
            tokens[name], user_ids[name] = users.create_token(session, user)[1], user.id
    models = {"alice": _add_model(service_config, user_ids["alice"], artifact),
              "alice2": _add_model(service_config, user_ids["alice"], artifact),
              "broken": _add_model(service_config, user_ids["alice"], None),
              "bob": _add_model(service_config, user_ids["bob"], artifact),
              "carol": _add_model(service_config, user_ids["carol"], artifact)}
    with api_process(service_env) as (url, _proc):
        yield World(url, service_env, tokens, user_ids, models)


def _get(world: World, who: str, path: str, timeout: float = 10) -> requests.Response:
    return requests.get(f"{world.url}{path}", headers={"Authorization": f"Bearer {world.tokens[who]}"},
                        timeout=timeout)


def _cli(world: World, who: str, *args: str) -> subprocess.CompletedProcess:
    """`graft models download ...` as a user runs it, against the world's API."""
    env = {**os.environ, "GRAFT_URL": world.url, "GRAFT_TOKEN": world.tokens[who]}
    return subprocess.run([sys.executable, "-m", "graft.cli.main", "models", "download", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def _tasks(worker) -> int:  # noqa: ANN001
    """How many export tasks the worker has received (Celery logs each one)."""
    return sum("graft.export_model[" in line and "] received" in line
               for line in worker.log_path.read_text(errors="replace").splitlines())


def _builds(worker, model_id: str, fmt: str) -> int:  # noqa: ANN001
    """How many times the worker began building this export (export_runner logs each build once)."""
    return worker.log_path.read_text(errors="replace").count(f"model {model_id}: building the {fmt} export")


def test_parallel_downloads_share_one_build_and_the_api_stays_responsive(  # noqa: ANN001
        world: World, worker, service_config, tmp_path: Path) -> None:
    model_id = world.models["alice"]
    path = f"/api/v1/models/{model_id}/download?format={FAST}"
    _get(world, "alice", f"/api/v1/models/{model_id}")  # the serving processes' first request (connections) is done
    tasks = _tasks(worker)

    def ask(_index: int) -> tuple[requests.Response, float]:
        started = time.monotonic()
        response = _get(world, "alice", path, timeout=1)  # the client timeout that used to hold API threads
        return response, time.monotonic() - started

    answers = at_once(ask, 6)
    for response, took in answers:
        assert response.status_code == 202 and took < 1, (response.status_code, took)
        body = response.json()
        assert body["status"] in ("queued", "building") and body["url"] == path == response.headers["Location"]
        assert int(response.headers["Retry-After"]) == body["retry_after_s"] > 0

    # While the worker builds it (the first task imports torch: seconds), the API answers at once.
    deadline, health_polls = time.monotonic() + 180, 0
    while True:
        started = time.monotonic()
        health = requests.get(f"{world.url}/healthz", timeout=1)  # 503 only says "degraded": it still answered
        assert health.status_code in (200, 503) and time.monotonic() - started < 1
        health_polls += 1
        response = _get(world, "alice", path)
        if response.status_code == 200:
            break
        assert response.status_code == 202, response.text
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.2)
    assert health_polls > 1  # the build was still running after the six 202s
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert "model.torchscript.pt" in archive.namelist()
    assert _builds(worker, model_id, FAST) == 1, worker.log_tail()  # six requests, one build
    time.sleep(1)  # a second task, had one been sent, is taken once the first is done
    queued = redis.Redis.from_url(world.env["GRAFT_REDIS_URL"]).llen(f"{world.env['GRAFT_QUEUE']}.batch")
    assert (_tasks(worker) - tasks, queued) == (1, 0), worker.log_tail()  # ... and one task sent
    zip_bytes = export_zip(service_config.artifacts_dir, model_id, FAST).stat().st_size
    with session_scope(service_config.database_url) as session:  # the export counts toward alice's storage
        model = session.get(TrainedModel, model_id)
        assert model.size_bytes == Path(model.path).stat().st_size + zip_bytes
        assert users.usage(session, world.user_ids["alice"]).stored_bytes >= model.size_bytes

    again = _get(world, "alice", path)  # built: sent from disk, no new build
    assert again.status_code == 200 and again.content == response.content
    saved = _cli(world, "alice", model_id, "--format", FAST, "-o", str(tmp_path / "m.zip"))
    assert saved.returncode == 0 and (tmp_path / "m.zip").read_bytes() == response.content, saved.stderr
    assert _builds(worker, model_id, FAST) == 1

    for fmt in (FAST, "onnx"):  # built or not, another user's model is not found, and nothing is queued for it
        foreign = _get(world, "bob", f"/api/v1/models/{model_id}/download?format={fmt}")
        assert foreign.status_code == 404 and foreign.json()["error"].startswith("no model"), foreign.text
    assert not export_builds.state(export_builds.connect(world.env["GRAFT_REDIS_URL"]), world.env["GRAFT_QUEUE"],
                                   model_id, "onnx")


def test_a_failed_build_is_reported_and_not_retried(world: World, worker, service_config, data_root,  # noqa: ANN001
                                                    tmp_path: Path) -> None:
    model_id = world.models["broken"]
    path = f"/api/v1/models/{model_id}/download?format=onnx"
    deadline = time.monotonic() + 120
    while (response := _get(world, "alice", path)).status_code == 202:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.5)
    body = response.json()
    assert response.status_code == 500 and body["code"] == "export_failed" and body["format"] == "onnx", body
    assert "failed" in body["error"] and int(response.headers["Retry-After"]) > 0
    assert str(service_config.artifacts_dir) not in body["error"] and str(data_root) not in body["error"]
    for _ in range(3):  # asking again reports the same failure; no new build is sent
        assert _get(world, "alice", path).json() == body
    cli = _cli(world, "alice", model_id, "--format", "onnx", "-o", str(tmp_path / "m.zip"))
    assert cli.returncode == 1 and "HTTP 500: exporting model" in cli.stderr and "failed" in cli.stderr, cli.stderr
    assert not (tmp_path / "m.zip").exists()
    time.sleep(1)
    assert _builds(worker, model_id, "onnx") == 1, worker.log_tail()
    assert not export_zip(service_config.artifacts_dir, model_id, "onnx").exists()


def test_an_export_past_the_owners_storage_quota_is_refused(world: World) -> None:
    model_id = world.models["carol"]  # 13 MB of her 20: its export would take her past
    response = _get(world, "carol", f"/api/v1/models/{model_id}/download?format={FAST}")
    assert response.status_code == 507 and response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["error"].startswith("storage quota exceeded") and response.json()["max_storage_mb"] == 20
    assert not export_builds.state(export_builds.connect(world.env["GRAFT_REDIS_URL"]), world.env["GRAFT_QUEUE"],
                                   model_id, FAST)  # nothing queued


def test_builds_wait_on_the_batch_queue_at_most_two_per_user(world: World, tmp_path: Path) -> None:
    # An API on a queue no worker serves: builds stay queued, so the bound is seen deterministically.
    queue = f"graft-exports-{uuid.uuid4().hex[:8]}"
    env = {**world.env, "GRAFT_QUEUE": queue}
    alice, alice2 = world.models["alice"], world.models["alice2"]
    store = redis.Redis.from_url(env["GRAFT_REDIS_URL"])
    try:
        with api_process(env) as (url, _proc):
            local = World(url, env, world.tokens, world.user_ids, world.models)
            for model_id, fmt in ((alice, "onnx"), (alice, "openvino"), (alice, "onnx")):
                response = _get(local, "alice", f"/api/v1/models/{model_id}/download?format={fmt}")
                assert response.status_code == 202, response.text  # the repeated onnx shares the first build
            refused = _get(local, "alice", f"/api/v1/models/{alice2}/download?format=onnx")
            body = refused.json()
            assert refused.status_code == 429 and body["code"] == "too_many_exports", body
            assert (body["exports"], body["max_exports"]) == (2, 2) and int(refused.headers["Retry-After"]) > 0
            assert "2 model export(s) queued or building" in body["error"]
            waited = _cli(local, "alice", alice, "--format", "onnx", "--wait", "1", "-o", str(tmp_path / "m.zip"))
            assert waited.returncode == 1 and "onnx export is still queued after 1.0 s" in waited.stderr, waited.stderr
            # another user's builds are counted apart
            assert _get(local, "bob", f"/api/v1/models/{world.models['bob']}/download?format=onnx").status_code == 202
        # On the batch queue (with training), never ahead of interactive predictions.
        assert store.llen(f"{queue}.batch") == 3 and store.llen(f"{queue}.interactive") == 0
    finally:
        for key in store.scan_iter(f"*{queue}*"):
            store.delete(key)
        store.close()
