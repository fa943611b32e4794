"""Datasets: uploads refused safely through the API, and training on a dataset id (real services)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from graft.cli.sampledata import make_shapes_dataset
from graft.shared import lifecycle
from graft.shared.db import session_scope
from graft.shared.models import DatasetRecord, Job, new_id
from tests.archives import CASES, JUNK, MB, image, zip_bytes
from tests.helpers import HYMENOPTERA, ROOT, TOKEN, wait_for_dataset, wait_for_job

TINY = {"backbone": "resnet18", "pretrained": False, "image_size": 64, "epochs": 1, "batch_size": 8}


# ---- fixtures -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_app(service_config):  # noqa: ANN001, ANN201
    """The API with small limits, so the oversize cases need small bodies only."""
    from graft.api import create_app

    return create_app(service_config.replace(max_body_mb=1, archive_max_members=50, archive_max_bytes=4 * MB))


def _client(app):  # noqa: ANN001, ANN202
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return test_client


def _upload(client, body: bytes, filename: str, name: str | None = None):  # noqa: ANN001, ANN202
    """POST a multipart body built here (as bytes: the test client would spool big ones to an unclosed file)."""
    boundary = "graft-test-boundary"
    head = b""
    if name is not None:
        head = f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n".encode()
    head += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
             "Content-Type: application/octet-stream\r\n\r\n").encode()
    data = head + body + f"\r\n--{boundary}--\r\n".encode()
    return client.post("/api/v1/datasets", data=data, content_type=f"multipart/form-data; boundary={boundary}")


def _stored(config) -> set[str]:  # noqa: ANN001
    folder = config.datasets_dir
    return {p.name for p in folder.iterdir() if p.name != ".staging"} if folder.is_dir() else set()


def _staging_empty(config) -> bool:  # noqa: ANN001
    staging = config.datasets_dir / ".staging"
    return not staging.exists() or not any(staging.iterdir())


# ---- the table of bad inputs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("build", "status", "code", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_inputs_are_refused_or_reported(small_app, service_config, worker, build, status: int, code: str | None,
                                            named: str | None) -> None:  # noqa: ANN001
    client = _client(small_app)
    before = _stored(service_config)
    response = _upload(client, *build())
    payload = response.get_json()
    assert response.status_code == status, payload
    assert response.headers["Content-Type"] == ("application/problem+json" if status >= 400 else "application/json")
    assert _staging_empty(service_config)  # nothing half-extracted is left behind
    if status >= 400:
        assert payload["error"] and payload["status"] == status
        if code:
            assert payload["code"] == code, payload
        assert _stored(service_config) == before  # nothing stored
    else:
        assert payload["status"] == "inspecting" and _stored(service_config) == before | {payload["id"]}
        payload = wait_for_dataset(client, payload["id"])  # a worker inspects it
        folder = service_config.datasets_dir / payload["id"]
        assert not {p.name for p in folder.rglob("*")} & JUNK  # junk was never written
        codes = {issue["code"]: issue for issue in payload["issues"]}
        if code:
            assert code in codes, payload["issues"]
            if named:
                assert named in codes[code]["files"]
        else:  # nested junk: silently ignored, the wrapper folder stepped into
            assert payload["classes"] == {"cats": 3, "dogs": 3} and set(codes) == {"class_small"}
        assert payload["has_errors"] == (code == "too_few_classes")
        assert payload["status"] == ("failed" if code == "too_few_classes" else "ready")
    assert client.get("/healthz").status_code == 200


def test_body_over_the_limit_is_counted_while_streaming(small_app, service_config) -> None:  # noqa: ANN001
    """No Content-Length (a chunked upload): the bytes are counted as they arrive and refused past the limit."""
    client = _client(small_app)
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.zip\"\r\n\r\n".encode()
            + b"\0" * (MB + 4096) + f"\r\n--{boundary}--\r\n".encode())
    before = _stored(service_config)
    response = client.post("/api/v1/datasets", input_stream=io.BytesIO(body),
                           content_type=f"multipart/form-data; boundary={boundary}",
                           environ_overrides={"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    assert response.status_code == 413 and "GRAFT_MAX_UPLOAD_MB" in response.get_json()["error"]
    assert _stored(service_config) == before and _staging_empty(service_config)


def test_requests_without_an_archive_are_4xx(client) -> None:  # noqa: ANN001
    assert client.post("/api/v1/datasets", data=b"x", content_type="application/zip").status_code == 415
    response = client.post("/api/v1/datasets", data={"other": "x"}, content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json()["field"] == "file"
    assert client.post("/api/v1/datasets", json={"path": "/etc"}).get_json()["field"] == "path"
    assert client.get("/api/v1/datasets/nope").status_code == 404
    assert client.delete("/api/v1/datasets/nope").status_code == 404


# ---- datasets as a service: train on one, delete, server paths, the CLI ---------------------------------------------

def _tar_folder(folder: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        archive.add(folder, arcname=".")  # a "./" entry first, as `tar -C folder -czf x.tgz .` writes
    return out.getvalue()


@pytest.mark.both_databases
def test_train_on_an_uploaded_dataset_and_delete_it(client, worker, service_config, tmp_path: Path) -> None:  # noqa: ANN001
    shapes = make_shapes_dataset(tmp_path / "shapes", per_class=6, size=64, classes=("circles", "squares"))
    response = _upload(client, _tar_folder(shapes), "shapes.tar.gz")
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["status"] == "inspecting"
    dataset = wait_for_dataset(client, response.get_json()["id"])
    assert dataset["status"] == "ready"
    assert response.headers["Location"].endswith(f"/api/v1/datasets/{dataset['id']}")
    assert dataset["name"] == "shapes" and dataset["classes"] == {"circles": 6, "squares": 6}
    assert dataset["num_images"] == 12 and not dataset["has_errors"] and dataset["layout"] == "folders"
    assert client.get(f"/api/v1/datasets/{dataset['id']}").get_json()["issues"] == dataset["issues"]
    listed = client.get("/api/v1/datasets?limit=100").get_json()["items"]
    assert dataset["id"] in {d["id"] for d in listed}

    assert "path" not in dataset  # where Graft keeps an upload is none of the caller's business
    job = client.post("/api/v1/jobs/train", json={"dataset_id": dataset["id"], **TINY}).get_json()
    assert job["params"]["dataset_id"] == dataset["id"] and "data_dir" not in job["params"]
    job = wait_for_job(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert client.get(f"/api/v1/models/{job['model_id']}").get_json()["classes"] == ["circles", "squares"]

    with session_scope(service_config.database_url) as session:  # a queued job (never enqueued) holds the dataset
        folder = service_config.datasets_dir / dataset["id"]
        holder = lifecycle.create_job(session, "train", {"dataset_id": dataset["id"], "data_dir": str(folder)}).id
    assert folder.is_dir()  # so that its removal below means something
    busy = client.delete(f"/api/v1/datasets/{dataset['id']}")
    assert busy.status_code == 409 and busy.get_json()["jobs"] == [holder]
    assert client.post(f"/api/v1/jobs/{holder}/cancel").status_code == 200
    assert client.delete(f"/api/v1/datasets/{dataset['id']}").status_code == 200
    assert not folder.exists()
    assert client.get(f"/api/v1/datasets/{dataset['id']}").status_code == 404


def test_training_on_a_dataset_that_is_not_ready_is_refused(client, worker, service_config) -> None:  # noqa: ANN001
    with session_scope(service_config.database_url) as session:  # still inspecting: no job is recorded
        jobs_before = session.scalar(select(func.count()).select_from(Job))
    inspecting = DatasetRecord(id=new_id(), name="pending", source="path", path="/nowhere", status="inspecting")
    with session_scope(service_config.database_url) as session:
        session.add(inspecting)
    response = client.post("/api/v1/jobs/train", json={"dataset_id": inspecting.id, **TINY})
    assert response.status_code == 409 and response.get_json()["dataset_status"] == "inspecting"
    assert "still being inspected" in response.get_json()["error"]

    accepted = _upload(client, zip_bytes({"only/a.png": image(1), "only/b.png": image(2)}), "one.zip").get_json()
    dataset = wait_for_dataset(client, accepted["id"])
    assert dataset["status"] == "failed" and dataset["has_errors"]
    assert dataset["issues"][0]["code"] == "too_few_classes"
    response = client.post("/api/v1/jobs/train", json={"dataset_id": dataset["id"], **TINY})
    assert response.status_code == 409 and response.get_json()["dataset_status"] == "failed"
    assert response.get_json()["error"].startswith(f"dataset {dataset['id']} failed inspection: need at least 2")
    with session_scope(service_config.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == jobs_before
    both = client.post("/api/v1/jobs/train", json={"dataset_id": dataset["id"], "data_dir": "/x"})
    assert both.status_code == 400 and "exactly one" in both.get_json()["error"]
    missing = client.post("/api/v1/jobs/train", json={"dataset_id": "0" * 32})
    assert missing.status_code == 404 and missing.get_json()["field"] == "dataset_id"


def test_a_server_folder_is_inspected_in_place(client, worker, data_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    folder = make_shapes_dataset(data_root / "in-place", per_class=3, size=40, classes=("circles", "squares"))
    (folder / "circles" / "notes.jpg").write_text("not an image")
    response = client.post("/api/v1/datasets", json={"path": str(folder), "name": "mine"})
    assert response.status_code == 202, response.get_json()
    dataset = wait_for_dataset(client, response.get_json()["id"])
    assert dataset["source"] == "path" and dataset["path"] == str(folder.resolve()) and dataset["name"] == "mine"
    assert {i["code"]: i["files"] for i in dataset["issues"]}["not_image"] == ["circles/notes.jpg"]
    escape = data_root / "escape"
    escape.symlink_to(tmp_path)  # inside the roots by name, outside once symlinks are followed
    assert client.post("/api/v1/datasets", json={"path": str(escape)}).status_code == 400
    assert client.delete(f"/api/v1/datasets/{dataset['id']}").status_code == 200
    assert (folder / "circles").is_dir()  # the user's own folder is never deleted



def test_inspection_lists_misfiled_images_before_any_training(client, worker, data_root: Path) -> None:  # noqa: ANN001
    folder = make_shapes_dataset(data_root / "misfiled", per_class=40, size=64, classes=("circles", "squares"))
    for path in sorted((folder / "circles").iterdir())[:2]:
        path.rename(folder / "squares" / f"misfiled-{path.name}")
    response = client.post("/api/v1/datasets", json={"path": str(folder)})
    assert response.status_code == 202, response.get_json()
    dataset = wait_for_dataset(client, response.get_json()["id"], timeout=300)
    assert dataset["status"] == "ready", dataset
    issues = {i["code"]: i for i in dataset["issues"]}
    suspects = issues["suspected_mislabel"]
    assert suspects["level"] == "warning" and suspects["job_id"] is None, suspects
    assert {"squares/misfiled-circles_000.jpg", "squares/misfiled-circles_001.jpg"} <= set(suspects["files"])

def test_cli_adds_a_folder_and_shows_the_report(http_app: str, worker, tmp_path: Path) -> None:  # noqa: ANN001
    folder = make_shapes_dataset(tmp_path / "my photos", per_class=3, size=40, classes=("circles", "squares"))
    (folder / ".DS_Store").write_bytes(b"junk")
    (folder / "squares" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    env = {**os.environ, "GRAFT_URL": http_app, "GRAFT_TOKEN": TOKEN}

    def graft(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "graft.cli.main", "datasets", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    added = graft("add", str(folder))
    assert added.returncode == 0, added.stderr
    assert "uploading [" in added.stderr and "100.0%" in added.stderr
    dataset_id = added.stdout.split()[1]
    assert "'my photos': 6 images in 2 classes" in added.stdout and "squares/broken.jpg" in added.stdout
    shown = graft("show", dataset_id)
    assert shown.returncode == 0 and "[corrupt]" in shown.stdout and "circles" in shown.stdout
    assert dataset_id in graft("list").stdout
    assert graft("delete", dataset_id).returncode == 0
    assert "HTTP 404" in graft("show", dataset_id).stderr


@pytest.mark.slow
@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="hymenoptera data set not present")
def test_hymenoptera_zip_report_matches_the_folder_and_trains(client, worker, tmp_path: Path) -> None:  # noqa: ANN001
    archive = tmp_path / "hymenoptera.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(HYMENOPTERA.rglob("*")):
            if path.is_file():
                zf.write(path, Path("hymenoptera") / path.relative_to(HYMENOPTERA))
    response = _upload(client, archive.read_bytes(), archive.name)
    assert response.status_code == 202, response.get_json()
    dataset = wait_for_dataset(client, response.get_json()["id"], timeout=300)
    assert dataset["status"] == "ready"
    on_disk = {split: {cls: sum(1 for p in (HYMENOPTERA / split / cls).iterdir() if p.is_file())
                       for cls in ("ants", "bees")} for split in ("train", "val")}
    assert dataset["layout"] == "train_val" and dataset["splits"] == on_disk
    assert dataset["classes"] == {c: on_disk["train"][c] + on_disk["val"][c] for c in ("ants", "bees")}
    # imageNotFound.gif really is a GIF (a 300x300 placeholder picture): a readable, palette image, not an error.
    with Image.open(HYMENOPTERA / "train" / "ants" / "imageNotFound.gif") as gif:
        assert gif.format == "GIF" and gif.size == (300, 300)
    assert not any("train/ants/imageNotFound.gif" in i["files"] for i in dataset["issues"])
    assert dataset["conversions"]["palette"] >= 1 and not dataset["has_errors"]

    body = {"dataset_id": dataset["id"], "backbone": "efficientnet_lite0", "mode": "linear", "epochs": 2,
            "image_size": 128}
    job = wait_for_job(client, client.post("/api/v1/jobs/train", json=body).get_json()["id"], timeout=600)
    assert job["status"] == "succeeded", job["error"]
    assert job["metrics"]["best_val_acc"] > 0.7 and job["metrics"]["val_images"] == 153
    # The job's label audit is also the dataset's suspected_mislabel warning: the same files, most suspicious first,
    # named as the rest of the report names them (train/ants/x.jpg).
    audit = job["metrics"]["label_audit"]
    issues = {i["code"]: i for i in client.get(f"/api/v1/datasets/{dataset['id']}").get_json()["issues"]}
    assert audit["images"] == dataset["num_images"]
    if audit["suspects"]:
        issue = issues["suspected_mislabel"]
        assert issue["level"] == "warning" and issue["files"] == [s["path"] for s in audit["suspects"]]
        assert all(f.split("/")[0] in ("train", "val") and f.split("/")[1] in ("ants", "bees") for f in issue["files"])
    else:
        assert "suspected_mislabel" not in issues
