"""Integration: the Flask API, a real Redis, a real `graft worker` process and a real database."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from graft.cli.sampledata import make_shapes_dataset
from tests.helpers import model_file, wait_for_job

TINY = {"backbone": "resnet18", "pretrained": False, "image_size": 64, "epochs": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def shapes(data_root: Path) -> Path:
    """Three classes of generated images plus files that must be skipped, not crash the job."""
    root = make_shapes_dataset(data_root / "shapes", per_class=12, size=72)
    (root / "circles" / "notes.jpg").write_text("not an image")
    (root / "squares" / "empty.jpg").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"\0junk")
    return root


@pytest.mark.both_databases
def test_train_job_end_to_end(client, worker, shapes: Path, service_config) -> None:  # noqa: ANN001
    from graft.worker.core.checkpoint import load_model_artifact
    from graft.worker.core.images import decode_image
    from graft.worker.core.transforms import eval_batch

    response = client.post("/api/v1/jobs/train", json={"data_dir": str(shapes), **TINY})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert response.headers["Location"].endswith(f"/api/v1/jobs/{job['id']}")
    assert job["status"] == "queued" and job["kind"] == "train"
    assert job["params"]["val_split"] == 0.2 and job["params"]["seed"] == 0  # defaults filled in

    job = wait_for_job(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert [h["epoch"] for h in job["metrics"]["history"]] == [1, 2]
    assert job["progress"]["fraction"] == 1.0 and job["progress"]["epochs"] == 2
    assert sorted(s["path"] for s in job["metrics"]["skipped_files"]) == ["circles/notes.jpg", "squares/empty.jpg"]
    assert job["started_at"] and job["finished_at"] and job["worker"].startswith(worker.name)

    events = client.get(f"/api/v1/jobs/{job['id']}/events").get_json()["items"]
    assert [(e["from"], e["to"]) for e in events] == [(None, "queued"), ("queued", "running"), ("running", "succeeded")]

    listed = client.get(f"/api/v1/models?job_id={job['id']}").get_json()["items"]
    assert [m["id"] for m in listed] == [job["model_id"]]
    model = client.get(f"/api/v1/models/{job['model_id']}").get_json()
    assert model["classes"] == ["circles", "squares", "triangles"] and model["image_size"] == 64
    assert set(model["metrics"]["per_class"]) == {"circles", "squares", "triangles"}
    assert sum(r["support"] for r in model["metrics"]["per_class"].values()) == job["metrics"]["val_images"]
    assert np.array(model["metrics"]["confusion_matrix"]).sum() == job["metrics"]["val_images"]

    # The artifact loads on its own and reproduces the reported validation accuracy's predictions shape.
    assert "path" not in model  # no server paths in API responses
    net, meta = load_model_artifact(model_file(service_config.artifacts_dir, model["id"]))
    assert meta["classes"] == model["classes"]
    prep = meta["preprocessing"]
    img = decode_image(shapes / "circles" / "circles_000.jpg", prep.resize)
    assert net(eval_batch([img], prep)).shape == (1, 3)


def test_jobs_list_filters_and_paginates(client, worker, shapes: Path) -> None:  # noqa: ANN001
    ids = [client.post("/api/v1/jobs/train", json={"data_dir": str(shapes), **TINY, "epochs": 1}).get_json()["id"]
           for _ in range(3)]
    for job_id in ids:
        wait_for_job(client, job_id)
    first = client.get("/api/v1/jobs?limit=2").get_json()
    assert len(first["items"]) == 2 and first["next"]
    second = client.get(first["next"]).get_json()
    assert first["items"][0]["id"] == ids[-1]  # newest first
    assert not {j["id"] for j in first["items"]} & {j["id"] for j in second["items"]}
    succeeded = client.get("/api/v1/jobs?status=succeeded&limit=100").get_json()["items"]
    assert set(ids) <= {j["id"] for j in succeeded}
    assert client.get("/api/v1/jobs?status=bogus").status_code == 400


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"only": 5}, "need at least 2 classes"),
        ({"good": 5, "broken": 0}, "no readable training image: broken"),
    ],
)
def test_unusable_dataset_fails_with_message(client, worker, data_root: Path, layout, message) -> None:  # noqa: ANN001
    root = data_root / f"bad-{'-'.join(layout)}"
    make_shapes_dataset(root, per_class=5, size=48, classes=tuple(k for k, n in layout.items() if n))
    for name, count in layout.items():
        if count == 0:
            (root / name).mkdir(parents=True)
            (root / name / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    job_id = client.post("/api/v1/jobs/train", json={"data_dir": str(root), **TINY}).get_json()["id"]
    job = wait_for_job(client, job_id)
    assert job["status"] == "failed"
    assert message in job["error"]
    assert job["model_id"] is None


def test_resnet18_without_weights_fails_clearly(client, worker, shapes: Path) -> None:  # noqa: ANN001
    body = {"data_dir": str(shapes), **TINY, "pretrained": True}
    job = wait_for_job(client, client.post("/api/v1/jobs/train", json=body).get_json()["id"])
    assert job["status"] == "failed"
    assert "resnet18 ImageNet weights not found" in job["error"]
    assert "pretrained=false" in job["error"]


def test_unknown_ids_are_404_json(client) -> None:  # noqa: ANN001
    for path in ("/api/v1/jobs/nope", "/api/v1/models/nope", "/api/v1/nothing-here"):
        response = client.get(path)
        assert response.status_code == 404
        assert "error" in response.get_json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"data_dir": "/etc"}, "data_dir"),
        ({"data_dir": "relative/path"}, "data_dir"),
        ({"data_dir": 5}, "data_dir"),
        ({}, "data_dir"),
        ({"data_dir": "{root}", "epochs": "3"}, "epochs"),
        ({"data_dir": "{root}", "epochs": 0}, "epochs"),
        ({"data_dir": "{root}", "pretrained": 1}, "pretrained"),
        ({"data_dir": "{root}", "backbone": "vgg"}, "backbone"),
        ({"data_dir": "{root}", "learning_rate": "fast"}, "learning_rate"),
        ({"data_dir": "{root}", "val_split": 1.5}, "val_split"),
        ({"data_dir": "{root}", "colour": "blue"}, "colour"),
    ],
)
def test_bad_train_requests_are_400_naming_the_field(client, shapes: Path, body: dict, field: str) -> None:  # noqa: ANN001
    body = {k: str(shapes) if v == "{root}" else v for k, v in body.items()}
    before = client.get("/api/v1/jobs?limit=100").get_json()["items"]
    response = client.post("/api/v1/jobs/train", json=body)
    assert response.status_code == 400
    payload = response.get_json()
    assert payload["field"] == field and field in payload["error"]
    assert client.get("/api/v1/jobs?limit=100").get_json()["items"] == before  # nothing recorded or lost


def test_symlink_out_of_root_is_refused(client, data_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    link = data_root / "escape"
    if not link.exists():
        os.symlink(tmp_path, link)
    response = client.post("/api/v1/jobs/train", json={"data_dir": str(link)})
    assert response.status_code == 400
    assert "outside the configured data roots" in response.get_json()["error"]


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dGVzdA==", "Bearer "])
def test_token_required(app, header) -> None:  # noqa: ANN001
    client = app.test_client()
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/v1/jobs", headers=headers)
    assert response.status_code == 401
    assert "token" in response.get_json()["error"]
    assert client.get("/healthz").status_code == 200  # health needs no token


def test_non_json_body_is_400(client) -> None:  # noqa: ANN001
    response = client.post("/api/v1/jobs/train", data="data_dir=/x", content_type="text/plain")
    assert response.status_code == 400
    assert "JSON object" in response.get_json()["error"]
