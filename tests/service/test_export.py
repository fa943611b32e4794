"""Model downloads end to end: a real efficientnet_lite0 model trained on hymenoptera, each format exported by a real
worker, downloaded through the API, run with its own runtime by the zip's README snippet, and compared with Graft."""
from __future__ import annotations

import io
import re
import time
import uuid
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from graft.shared.db import session_scope
from graft.shared.exports import EXPORT_FORMATS, export_error, export_zip
from graft.shared import lifecycle
from graft.shared.models import TrainedModel
from tests.helpers import HYMENOPTERA, TOKEN, model_file, wait_for_job

pytestmark = pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="hymenoptera data set not present")

MODEL_FILES = {"onnx": ["model.onnx"], "torchscript": ["model.torchscript.pt"], "openvino": ["model.xml", "model.bin"],
               "pt": ["model.pt2"]}
DOCUMENTS = ["README.md", "labels.json", "metrics.json", "preprocessing.json"]
PER_CLASS = 20  # 40 val images


@pytest.fixture(scope="module")
def model(app, worker) -> dict:  # noqa: ANN001
    """One small model trained through the service: efficientnet_lite0 (weights ship offline), linear, 128 px."""
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
        assert body["status"] == "exporting" and int(response.headers["Retry-After"]) == body["retry_after_s"]
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


def test_failed_export_is_a_json_500(client, worker, service_config, data_root: Path) -> None:  # noqa: ANN001
    broken = data_root / "broken-model" / "model.pt"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not a model")
    model_id = uuid.uuid4().hex
    with session_scope(service_config.database_url) as session:
        owner = lifecycle.create_job(session, "train", {"note": "owner of a broken model"})
        session.add(TrainedModel(id=model_id, job_id=owner.id, backbone="resnet18", classes=["a", "b"],
                                 image_size=32, metrics={}, path=str(broken)))
    response = _download(client, model_id, "onnx", timeout=60)
    body = response.get_json()
    assert response.status_code == 500 and body["format"] == "onnx" and "failed" in body["error"], body
    assert str(service_config.artifacts_dir) not in body["error"] and str(data_root) not in body["error"]
    assert export_error(service_config.artifacts_dir, model_id, "onnx").is_file()
    assert not export_zip(service_config.artifacts_dir, model_id, "onnx").exists()


def test_model_resource_shows_no_server_path(client, model: dict) -> None:  # noqa: ANN001
    assert "path" not in model
    listed = client.get("/api/v1/models").get_json()["items"]
    assert listed and all("path" not in item for item in listed)
