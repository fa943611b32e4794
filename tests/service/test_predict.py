"""Predict jobs end to end: real Redis, two real `graft worker` processes, a real database and a real tiny model."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
from PIL import Image

from graft.cli.sampledata import make_shapes_dataset
from graft.shared import lifecycle
from graft.shared.db import session_scope
from graft.shared.models import Job, TrainedModel
from tests.helpers import HYMENOPTERA, ROOT, TOKEN, WorkerProcess, model_file, running_worker, wait_for_job

TINY = {"backbone": "resnet18", "pretrained": False, "image_size": 64, "epochs": 2, "batch_size": 8}
CLASSES = ["circles", "squares", "triangles"]


def _client(app):  # noqa: ANN001, ANN202
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return test_client


@pytest.fixture(scope="module")
def model(app, worker, data_root: Path, service_config) -> dict:  # noqa: ANN001
    """A tiny model trained by a real train job on generated shapes, with its artifact's server path added."""
    client = _client(app)
    shapes = make_shapes_dataset(data_root / "predict-train", per_class=10, size=72)
    job = client.post("/api/v1/jobs/train", json={"data_dir": str(shapes), **TINY}).get_json()
    job = wait_for_job(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    model = client.get(f"/api/v1/models/{job['model_id']}").get_json()
    return {**model, "path": str(model_file(service_config.artifacts_dir, model["id"]))}


@pytest.fixture(scope="module")
def second_worker(service_env: dict[str, str], worker, tmp_path_factory) -> Iterator[WorkerProcess]:  # noqa: ANN001
    """Another real worker process on the same queue, database and artifacts."""
    with running_worker(service_env, "w2", tmp_path_factory.mktemp("logs") / "worker2.log") as proc:
        yield proc


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (72, 60)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    cv2.circle(img, (size[0] // 2, size[1] // 2), min(size) // 3, (255, 255, 255), -1)
    ok, data = cv2.imencode(".jpg", img)
    path.write_bytes(data.tobytes())


@pytest.fixture(scope="module")
def messy(data_root: Path, tmp_path_factory) -> dict[str, Path]:  # noqa: ANN001
    """A nested folder with good images and every kind of trouble; maps relative path -> file."""
    root = data_root / "messy"
    make_shapes_dataset(root / "batch1", per_class=2, size=72)
    _jpeg(root / "deep" / "er" / "still-good.jpg", 1)
    good = root / "deep" / "er" / "still-good.jpg"
    (root / "broken").mkdir()
    (root / "broken" / "corrupt.jpg").write_bytes(good.read_bytes()[:4] + os.urandom(600))
    (root / "broken" / "notes.jpg").write_text("this is not an image\n")
    (root / "broken" / "empty.jpg").write_bytes(b"")
    rgba = np.zeros((50, 70, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 200, np.linspace(0, 255, 70, dtype=np.uint8)
    (root / "odd").mkdir()
    cv2.imwrite(str(root / "odd" / "alpha.png"), rgba)
    cv2.imwrite(str(root / "odd" / "gray.jpg"), np.random.default_rng(2).integers(0, 256, (64, 80), dtype=np.uint8))
    Image.new("CMYK", (66, 66), (10, 200, 30, 40)).save(root / "odd" / "cmyk.jpg", "JPEG")
    _jpeg(root / "odd" / "ñandú-蜂 photo.jpg", 3)
    (root / ".DS_Store").write_bytes(b"\0junk")  # OS litter: ignored and counted, not a row
    outside = tmp_path_factory.mktemp("outside") / "secret.jpg"
    _jpeg(outside, 4)
    (root / "odd" / "link-out.jpg").symlink_to(outside)
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".DS_Store"}


BAD = {"broken/corrupt.jpg", "broken/notes.jpg", "broken/empty.jpg", "odd/link-out.jpg"}


def _submit(client, **body) -> dict:  # noqa: ANN001
    response = client.post("/api/v1/jobs/predict", json=body)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def _all_results(client, job_id: str, limit: int = 1000) -> list[dict]:  # noqa: ANN001
    items, url = [], f"/api/v1/jobs/{job_id}/results?limit={limit}"
    while url:
        page = client.get(url).get_json()
        items += page["items"]
        url = page["next"]
    return items


@pytest.mark.both_databases
def test_nested_folder_every_file_one_row(client, model: dict, messy: dict[str, Path], data_root: Path) -> None:  # noqa: ANN001
    job = _submit(client, model_id=model["id"], input_dir=str(data_root / "messy"), top_k=2)
    assert job["kind"] == "predict" and job["status"] == "queued"
    job = wait_for_job(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    events = client.get(f"/api/v1/jobs/{job['id']}/events").get_json()["items"]
    assert [(e["from"], e["to"]) for e in events] == [(None, "queued"), ("queued", "running"), ("running", "succeeded")]
    assert job["progress"]["files_done"] == job["progress"]["files_total"] == len(messy)

    rows = _all_results(client, job["id"], limit=5)
    assert [r["path"] for r in rows] == sorted(messy)  # every file exactly once, sorted by path
    by_path = {r["path"]: r for r in rows}
    for path, row in by_path.items():
        if path in BAD:
            assert row["error"] and row["label"] is None and row["confidence"] is None and row["top_k"] == []
        else:
            assert row["error"] is None, (path, row)
            assert 0 < row["confidence"] <= 1 and row["ood_score"] >= 0 and len(row["top_k"]) == 2
            if row["label"] == "unknown":  # unlike the shapes it was trained on (reject_ood is on by default)
                assert row["reason"].startswith("unlike the training images"), row
            else:
                assert row["label"] in CLASSES and row["reason"] is None
                assert [t["label"] for t in row["top_k"]][0] == row["label"]
    assert "empty" in by_path["broken/empty.jpg"]["error"]
    assert "outside the configured data roots" in by_path["odd/link-out.jpg"]["error"]
    summary = job["metrics"]["summary"]
    assert summary["files"] == len(messy) and summary["errors"] == len(BAD) and summary["ignored"] == 1
    assert sum(summary["labels"].values()) == len(messy) - len(BAD)


def test_results_csv_sorted_with_columns(client, model: dict, messy: dict[str, Path], data_root: Path) -> None:  # noqa: ANN001
    job = wait_for_job(client, _submit(client, model_id=model["id"], input_dir=str(data_root / "messy"))["id"])
    response = client.get(f"/api/v1/jobs/{job['id']}/results?format=csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    table = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert table[0] == ["path", "label", "confidence", "error", "ood_score", "reason"]
    assert [r[0] for r in table[1:]] == sorted(messy)
    for path, label, confidence, error, ood_score, reason in table[1:]:
        assert (label == "" and confidence == "" and error and ood_score == "") if path in BAD else \
            (label in [*CLASSES, "unknown"] and float(confidence) > 0 and error == "" and float(ood_score) >= 0)
        assert (reason != "") == (label == "unknown")
    json_rows = {r["path"]: r for r in _all_results(client, job["id"])}
    assert all(json_rows[p]["confidence"] == float(c) and json_rows[p]["ood_score"] == float(o)
               for p, _, c, _, o, _ in table[1:] if c)


@pytest.mark.both_databases
def test_chunks_run_on_two_workers(client, model: dict, second_worker: WorkerProcess, data_root: Path) -> None:  # noqa: ANN001
    root = make_shapes_dataset(data_root / "many", per_class=16, size=64)
    job = _submit(client, model_id=model["id"], input_dir=str(root), chunk_size=4)
    job = wait_for_job(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["chunks"] == 12
    rows = _all_results(client, job["id"], limit=7)
    expected = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert [r["path"] for r in rows] == expected and all(r["error"] is None for r in rows)
    workers = job["metrics"]["summary"]["workers"]
    assert sum(workers.values()) == 48
    assert len(workers) == 2 and any(w.startswith(second_worker.name) for w in workers), workers


def test_batch_equals_one_at_a_time(client, model: dict, messy: dict[str, Path], data_root: Path) -> None:  # noqa: ANN001
    from graft.worker.core.checkpoint import load_model_artifact
    from graft.worker.core.images import decode_image
    from graft.worker.core.predict import Predictor
    from graft.worker.core.transforms import eval_batch

    files = [(name, path) for name, path in messy.items() if name not in BAD]
    batched = Predictor.from_artifact(model["path"], batch_size=8).predict_files(files, top_k=3)
    single = Predictor.from_artifact(model["path"], batch_size=1).predict_files(files, top_k=3)
    assert [r["label"] for r in batched] == [r["label"] for r in single]
    for a, b in zip(batched, single):
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        assert np.allclose([t["confidence"] for t in a["top_k"]], [t["confidence"] for t in b["top_k"]], atol=1e-5)
    # The eager model with the training-time eval transform, one image at a time, agrees with the job's rows.
    net, meta = load_model_artifact(Path(model["path"]))
    prep = meta["preprocessing"]
    job = wait_for_job(client, _submit(client, model_id=model["id"], input_dir=str(data_root / "messy"))["id"])
    rows = {r["path"]: r for r in _all_results(client, job["id"])}
    temperature = meta["calibration"]["temperature"]  # the job's confidences are calibrated
    for name, path in files:
        probs = (net(eval_batch([decode_image(path, prep.resize)], prep)) / temperature).softmax(1)[0].detach()
        assert rows[name]["top_k"][0]["label"] == meta["classes"][int(probs.argmax())]
        assert rows[name]["label"] in (rows[name]["top_k"][0]["label"], "unknown")
        assert abs(rows[name]["confidence"] - float(probs.max())) < 1e-4


def test_top_k_clamped_and_threshold_recorded(client, model: dict, data_root: Path) -> None:  # noqa: ANN001
    root = make_shapes_dataset(data_root / "few", per_class=2, size=64)
    job = _submit(client, model_id=model["id"], input_dir=str(root), top_k=50, threshold=1.0)
    assert job["params"]["top_k"] == 3 and job["params"]["threshold"] == 1.0
    job = wait_for_job(client, job["id"])
    rows = _all_results(client, job["id"])
    assert len(rows) == 6 and all(len(r["top_k"]) == 3 for r in rows)
    assert all(r["label"] == "unknown" for r in rows)  # no top confidence reaches 1.0
    assert job["metrics"]["summary"]["unknown"] == 6
    table = list(csv.reader(io.StringIO(client.get(f"/api/v1/jobs/{job['id']}/results?format=csv").get_data(as_text=True))))
    assert table[0] == ["path", "label", "confidence", "error", "ood_score", "reason", "top_k"]
    assert [t["label"] for t in json.loads(table[1][6])] == [t["label"] for t in rows[0]["top_k"]]


def test_bf16_precision_is_opt_in(client, model: dict, data_root: Path) -> None:  # noqa: ANN001
    root = make_shapes_dataset(data_root / "bf16", per_class=2, size=64)
    job = wait_for_job(client, _submit(client, model_id=model["id"], input_dir=str(root), precision="bf16",
                                           reject_ood=False)["id"])
    assert job["status"] == "succeeded" and job["params"]["precision"] == "bf16"
    rows = _all_results(client, job["id"])
    assert len(rows) == 6 and all(r["label"] in CLASSES and r["error"] is None for r in rows)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"model_id": "nope", "input_dir": "{root}"}, 404, "model_id"),
        ({"model_id": "{model}", "input_dir": "/etc"}, 400, "input_dir"),
        ({"model_id": "{model}", "input_dir": "{root}/../.."}, 400, "input_dir"),
        ({"model_id": "{model}", "input_dir": "{root}", "threshold": 1.5}, 400, "threshold"),
        ({"model_id": "{model}", "input_dir": "{root}", "threshold": -0.1}, 400, "threshold"),
        ({"model_id": "{model}", "input_dir": "{root}", "threshold": "high"}, 400, "threshold"),
        ({"model_id": "{model}", "input_dir": "{root}", "top_k": 0}, 400, "top_k"),
        ({"model_id": "{model}"}, 400, "input_dir"),
        ({"model_id": "{model}", "input_dir": "{root}", "upload_id": "0" * 32}, 400, "upload_id"),
        ({"model_id": "{model}", "upload_id": "f" * 32}, 404, "upload_id"),
        ({"model_id": "{model}", "upload_id": "../../etc"}, 404, "upload_id"),
        ({"model_id": "{model}", "input_dir": "{root}", "colour": "red"}, 400, "colour"),
        ({"model_id": "{model}", "input_dir": "{root}", "precision": "int8"}, 400, "precision"),
        ({"model_id": "{model}", "input_dir": "{root}", "runtime": "onnx"}, 400, "runtime"),
    ],
)
def test_bad_predict_requests(client, model: dict, data_root: Path, body: dict, status: int, field: str) -> None:  # noqa: ANN001
    body = {k: v.replace("{root}", str(data_root)).replace("{model}", model["id"]) if isinstance(v, str) else v
            for k, v in body.items()}
    response = client.post("/api/v1/jobs/predict", json=body)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["field"] == field and response.get_json()["error"]


def test_results_only_for_finished_predict_jobs(client, model: dict) -> None:  # noqa: ANN001
    assert client.get("/api/v1/jobs/nope/results").status_code == 404
    response = client.get(f"/api/v1/jobs/{model['job_id']}/results")
    assert response.status_code == 400 and "predict" in response.get_json()["error"]


def test_multipart_and_zip_uploads(client, model: dict, messy: dict[str, Path]) -> None:  # noqa: ANN001
    names = ["a/one.jpg", "ñandú/蜂.jpg", "notes.jpg"]
    sources = [messy["deep/er/still-good.jpg"], messy["odd/ñandú-蜂 photo.jpg"], messy["broken/notes.jpg"]]
    data = {"model_id": model["id"], "top_k": "2", "threshold": "", "reject_ood": "false", "file": [
        (io.BytesIO(p.read_bytes()), n) for n, p in zip(names, sources)]}
    response = client.post("/api/v1/jobs/predict", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["params"]["top_k"] == 2 and "upload_id" in response.get_json()["params"]
    job = wait_for_job(client, response.get_json()["id"])
    rows = {r["path"]: r for r in _all_results(client, job["id"])}
    assert sorted(rows) == sorted(names) and rows["notes.jpg"]["error"] and rows["a/one.jpg"]["label"] in CLASSES

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pics/x.jpg", sources[0].read_bytes())
        zf.writestr("pics/sub/y.png", messy["odd/alpha.png"].read_bytes())
        zf.writestr("__MACOSX/._x.jpg", b"junk")
    archive.seek(0)
    response = client.post("/api/v1/jobs/predict", data={"model_id": model["id"], "file": (archive, "photos.zip")},
                           content_type="multipart/form-data")
    job = wait_for_job(client, response.get_json()["id"])
    assert [r["path"] for r in _all_results(client, job["id"])] == ["pics/sub/y.png", "pics/x.jpg"]

    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.jpg", b"x")
    evil.seek(0)
    response = client.post("/api/v1/uploads", data={"file": (evil, "evil.zip")}, content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json()["field"] == "file"


def test_non_utf8_names_are_classified_and_shown_escaped(client, model: dict, messy: dict[str, Path],  # noqa: ANN001
                                                         data_root: Path) -> None:
    """A server folder, a zip member and a multipart file name holding bytes that are not UTF-8: each file is
    classified, its row named in the lossless escaped form (%XX, and % as %25), and the job succeeds."""
    picture = messy["deep/er/still-good.jpg"].read_bytes()
    folder = data_root / "latin1"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"caf\xe9 100%.jpg"), "wb") as raw:  # a name os.fsdecode cannot
        raw.write(picture)                                                            # turn into UTF-8
    (folder / "plain.jpg").write_bytes(picture)
    job = wait_for_job(client, _submit(client, model_id=model["id"], input_dir=str(folder))["id"])
    assert job["status"] == "succeeded", job["error"]
    rows = {r["path"]: r for r in _all_results(client, job["id"])}
    assert sorted(rows) == ["caf%E9 100%25.jpg", "plain.jpg"], rows
    assert all(r["label"] in CLASSES and not r["error"] for r in rows.values()), rows
    assert job["metrics"]["summary"]["non_utf8_names"] == 1

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pics/cafX.jpg", picture)
    zipped = archive.getvalue().replace(b"pics/cafX.jpg", b"pics/caf\xe9.jpg")  # Latin-1 bytes, no UTF-8 flag
    boundary = "graftb"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model_id\"\r\n\r\n{model['id']}\r\n".encode()
            + f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.zip"\r\n\r\n'.encode()
            + zipped + f"\r\n--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="file"; filename="na\xefve.jpg"\r\n\r\n' + picture
            + f"\r\n--{boundary}--\r\n".encode())
    response = client.post("/api/v1/jobs/predict", data=body,
                           content_type=f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 202, response.get_json()
    job = wait_for_job(client, response.get_json()["id"])
    assert job["status"] == "succeeded", job["error"]
    rows = {r["path"]: r for r in _all_results(client, job["id"])}
    assert sorted(rows) == ["na%EFve.jpg", "pics/caf%E9.jpg"] and all(r["label"] in CLASSES for r in rows.values())


@pytest.mark.both_databases
def test_synchronous_predict(client, model: dict, messy: dict[str, Path]) -> None:  # noqa: ANN001
    url = f"/api/v1/models/{model['id']}/predict"
    files = [(io.BytesIO(messy[n].read_bytes()), n) for n in ("odd/gray.jpg", "broken/empty.jpg", "odd/cmyk.jpg")]
    response = client.post(url, data={"file": files, "top_k": "5", "reject_ood": "false"},
                           content_type="multipart/form-data")
    assert response.status_code == 200, response.get_json()
    items = response.get_json()["items"]
    assert [i["path"] for i in items] == ["odd/gray.jpg", "broken/empty.jpg", "odd/cmyk.jpg"]
    assert items[0]["label"] in CLASSES and len(items[0]["top_k"]) == 3 and items[1]["error"] == "empty file"
    too_many = [(io.BytesIO(b"x"), f"{i}.jpg") for i in range(33)]
    assert client.post(url, data={"file": too_many}, content_type="multipart/form-data").status_code == 400
    assert client.post(url, data={}, content_type="multipart/form-data").status_code == 400
    one = [(io.BytesIO(messy["odd/gray.jpg"].read_bytes()), "gray.jpg")]
    assert client.post("/api/v1/models/nope/predict", data={"file": one},
                       content_type="multipart/form-data").status_code == 404
    same_name = [(io.BytesIO(messy[n].read_bytes()), "a.jpg") for n in ("odd/gray.jpg", "odd/cmyk.jpg")]
    both = client.post(url, data={"file": same_name}, content_type="multipart/form-data").get_json()
    assert [i["path"] for i in both["items"]] == ["a.jpg", "a.jpg"] and both["summary"]["files"] == 2
    job = client.get(f"/api/v1/jobs/{both['job_id']}").get_json()  # a predict job of its own, finished
    assert job["kind"] == "predict" and job["status"] == "succeeded" and job["params"]["interactive"]


@pytest.mark.both_databases
def test_synchronous_predict_runs_on_an_interactive_worker(app, service_env: dict[str, str], model: dict,  # noqa: ANN001
                                                           messy: dict[str, Path], data_root: Path,
                                                           tmp_path: Path) -> None:
    """A worker that serves only the interactive queue answers /predict (with its own pixel limit) and takes no
    training job; with no interactive worker the request answers 202 past the bound, and the job ends later."""
    from graft.api import create_app

    queue = f"graft-sync-{uuid.uuid4().hex[:8]}"  # queues of their own: the session's worker never sees them
    alone = create_app(app.config["GRAFT"].replace(queue=queue, sync_predict_wait_s=1)).test_client()
    alone.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    url = f"/api/v1/models/{model['id']}/predict"

    def send():  # noqa: ANN202
        files = [(io.BytesIO(messy["odd/gray.jpg"].read_bytes()), "gray.jpg")]
        return alone.post(url, data={"file": files}, content_type="multipart/form-data")

    waited = send()  # nobody serves <queue>.interactive yet: 202 after the bound, with a job to poll
    assert waited.status_code == 202, waited.get_json()
    pending = waited.get_json()
    assert pending["status"] == "queued" and waited.headers["Location"].endswith(f"/api/v1/jobs/{pending['id']}")
    train = alone.post("/api/v1/jobs/train", json={"data_dir": str(data_root), "pretrained": False}).get_json()
    env = {**service_env, "GRAFT_QUEUE": queue, "GRAFT_MAX_IMAGE_PIXELS": "100"}
    with running_worker(env, "interactive", tmp_path / "interactive.log", queues="interactive"):
        finished = wait_for_job(alone, pending["id"], timeout=120)
        assert finished["status"] == "succeeded", finished["error"]
        rows = alone.get(f"/api/v1/jobs/{pending['id']}/results").get_json()["items"]
        assert [r["path"] for r in rows] == ["00/gray.jpg"] and "too large" in rows[0]["error"]
        response = send()  # now answered by the interactive worker, under its pixel limit
        assert response.status_code == 200, response.get_json()
        (item,) = response.get_json()["items"]
        assert item["path"] == "gray.jpg" and item["label"] is None and "too large" in item["error"]
        assert alone.get(f"/api/v1/jobs/{train['id']}").get_json()["status"] == "queued"  # not its queue
    # The tries are jobs the Jobs list leaves out unless asked: they never bury the user's own jobs.
    listed = {j["id"] for j in alone.get("/api/v1/jobs?limit=100").get_json()["items"]}
    tries = {j["id"] for j in alone.get("/api/v1/jobs?limit=100&interactive=true").get_json()["items"]}
    assert train["id"] in listed and pending["id"] not in listed
    assert pending["id"] in tries and train["id"] not in tries
    assert alone.post(f"/api/v1/jobs/{train['id']}/cancel").status_code == 200


def test_failed_chunk_is_retried_then_fails_the_job(client, service_config, data_root: Path) -> None:  # noqa: ANN001
    model_id = uuid.uuid4().hex
    with session_scope(service_config.database_url) as session:
        owner = lifecycle.create_job(session, "train", {"note": "owner of a model whose file is gone"})
        session.add(TrainedModel(id=model_id, job_id=owner.id, backbone="resnet18", classes=CLASSES,
                                 image_size=64, metrics={}, path=str(data_root / "missing" / "model.pt")))
    root = make_shapes_dataset(data_root / "for-missing", per_class=1, size=64)
    job = wait_for_job(client, _submit(client, model_id=model_id, input_dir=str(root))["id"], timeout=120)
    assert job["status"] == "failed"
    assert "chunk 0 failed after 3 attempt(s): FileNotFoundError" in job["error"]
    assert client.get(f"/api/v1/jobs/{job['id']}/results").status_code == 409


def test_model_cache_loads_once_and_evicts(model: dict, tmp_path: Path) -> None:
    import shutil

    from graft.worker.core.model_cache import ModelCache

    copy = tmp_path / "copy" / "model.pt"
    copy.parent.mkdir()
    shutil.copy(model["path"], copy)
    cache = ModelCache(size=1)
    first = cache.get(model["path"])
    assert cache.get(model["path"]) is first and cache.loads == 1
    cache.get(copy)
    assert cache.get(model["path"]) is not first and cache.loads == 3


def test_cli_predict_uploads_and_writes_csv_and_json(http_app: str, model: dict, messy: dict[str, Path],
                                                     data_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "GRAFT_URL": http_app, "GRAFT_TOKEN": TOKEN}
    base = [sys.executable, "-m", "graft.cli.main", "predict", model["id"]]
    out = tmp_path / "out.csv"
    done = subprocess.run(base + [str(data_root / "messy"), "-o", str(out), "--top-k", "2"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert table[0] == ["path", "label", "confidence", "error", "ood_score", "reason", "top_k"]
    assert [r[0] for r in table[1:]] == sorted(messy)  # the symlink is read here and uploaded as a plain file
    # one line each: how many of the files read were classified, every label, unknown, errors (never twice)
    lines = done.stdout.splitlines()
    errors = sum(1 for r in table[1:] if r[3])
    assert lines[0].endswith(f": {len(table) - 1 - errors} of {len(table) - 1} files classified -> {out}"), lines
    words = [line.split()[0] for line in lines[1:] if line.startswith("  ")]
    assert words.count("unknown") == 1 and words.count("errors") == 1 and "(unknown)" not in done.stdout, lines
    out_json = tmp_path / "out.json"
    done = subprocess.run(base + ["--server-dir", str(data_root / "messy"), "-o", str(out_json)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out_json.read_text())
    assert [i["path"] for i in doc["items"]] == sorted(messy) and doc["summary"]["errors"] == len(BAD)


# --- the fp32 runtime (OpenVINO by default, eager PyTorch as the fallback) ------------------------------------------


def _runtime_files(messy: dict[str, Path], data_root: Path) -> list[tuple[str, Path]]:
    """The readable messy files and the model's 30 training shapes."""
    shapes = sorted((data_root / "predict-train").rglob("*.jpg"))
    return [(n, p) for n, p in messy.items() if n not in BAD] + [(p.name, p) for p in shapes]


def _assert_same_rows(a: list[dict], b: list[dict], atol: float) -> None:
    assert [r["label"] for r in a] == [r["label"] for r in b]
    for x, y in zip(a, b):
        assert [t["label"] for t in x["top_k"]] == [t["label"] for t in y["top_k"]], (x, y)
        assert np.allclose([t["confidence"] for t in x["top_k"]], [t["confidence"] for t in y["top_k"]], atol=atol)


def test_default_runtime_agrees_with_torch_fp32(model: dict, messy: dict[str, Path], data_root: Path) -> None:
    from graft.worker.core.predict import Predictor
    from graft.worker.core.runtimes import DEFAULT_RUNTIME

    files = _runtime_files(messy, data_root)
    fast = Predictor.from_artifact(model["path"])
    eager = Predictor.from_artifact(model["path"], optimize=False, runtime="torch")
    assert fast.runtime == DEFAULT_RUNTIME == "openvino" and eager.runtime == "torch"  # no silent fallback here
    _assert_same_rows(fast.predict_files(files, top_k=3), eager.predict_files(files, top_k=3), atol=1e-4)


@pytest.mark.parametrize("runtime", ["openvino", "torch"])
def test_runtime_batch_equals_one_at_a_time(model: dict, messy: dict[str, Path], data_root: Path, runtime: str) -> None:
    from graft.worker.core.predict import Predictor

    files = _runtime_files(messy, data_root)
    batched = Predictor.from_artifact(model["path"], runtime=runtime, batch_size=8)
    single = Predictor.from_artifact(model["path"], runtime=runtime, batch_size=1)
    assert batched.runtime == single.runtime == runtime
    _assert_same_rows(batched.predict_files(files, top_k=3), single.predict_files(files, top_k=3), atol=1e-5)


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="hymenoptera data set not present")
def test_default_runtime_agrees_on_imagenet_lite0(tmp_path: Path) -> None:
    """1000 ImageNet classes on real photos: near-ties are common, so a runtime that changes results shows here."""
    from graft.worker.core.backbones import BACKBONES, WeightsNotFound, build_model, lite0_imagenet
    from graft.worker.core.checkpoint import save_model_artifact
    from graft.worker.core.predict import Predictor
    from graft.worker.core.transforms import Preprocessing

    try:
        net = build_model("efficientnet_lite0", 1000, pretrained=True)
        net.head.load_state_dict(lite0_imagenet()._fc.state_dict())
    except WeightsNotFound as exc:
        pytest.skip(str(exc))
    info = BACKBONES["efficientnet_lite0"]
    meta = {"backbone": "efficientnet_lite0", "classes": [str(i) for i in range(1000)], "image_size": 224,
            "preprocessing": Preprocessing.for_size(224, info.mean, info.std).to_dict(), "metrics": {}, "params": {}}
    path = save_model_artifact(tmp_path, net.eval(), meta)
    photos = sorted((HYMENOPTERA / "val").rglob("*.jpg"))[::4]
    files = [(p.name, p) for p in photos]
    fast = Predictor.from_artifact(path)
    assert fast.runtime == "openvino" and len(files) >= 30
    _assert_same_rows(fast.predict_files(files, top_k=5),
                      Predictor.from_artifact(path, optimize=False, runtime="torch").predict_files(files, top_k=5),
                      atol=1e-4)


def test_runtime_falls_back_to_torch_without_openvino(model: dict, messy: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from graft.worker.core.predict import Predictor

    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    predictor = Predictor.from_artifact(model["path"], runtime="openvino")
    assert predictor.runtime == "torch"
    rows = predictor.predict_files([("gray.jpg", messy["odd/gray.jpg"])], reject_ood=False)
    assert rows[0]["label"] in CLASSES and rows[0]["error"] is None


def test_model_cache_keys_on_runtime(model: dict) -> None:
    from graft.worker.core.model_cache import ModelCache

    cache = ModelCache(size=2)
    default, torch_ = cache.get(model["path"]), cache.get(model["path"], runtime="torch")
    assert (default.runtime, torch_.runtime) == ("openvino", "torch") and cache.loads == 2
    assert cache.get(model["path"], runtime="openvino") is default
    assert cache.get(model["path"], "fp32", "torch") is torch_
    assert cache.loads == 2  # converted once per process and model, not per chunk


def test_openvino_import_sends_no_telemetry(tmp_path: Path) -> None:
    code = ("import sys; from worker.core.runtimes import import_openvino; ov = import_openvino(); "
            "assert sys.modules['openvino_telemetry'] is None; ov.Core()")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []  # a plain `import openvino` writes ~/intel/openvino_ga_cid and phones home


def test_job_runtime_param(client, model: dict, data_root: Path) -> None:  # noqa: ANN001
    root = make_shapes_dataset(data_root / "runtimes", per_class=2, size=64)
    rows = {}
    for runtime in ("torch", None):
        job = wait_for_job(client, _submit(client, model_id=model["id"], input_dir=str(root), top_k=3,
                                           runtime=runtime)["id"])
        assert job["status"] == "succeeded" and job["params"]["runtime"] == runtime, job["error"]
        rows[runtime] = _all_results(client, job["id"])
    assert len(rows[None]) == 6
    _assert_same_rows(rows[None], rows["torch"], atol=1e-4)


# --- uploads are removed when the job that used them is finished -------------------------------------------------


def _upload_gone(service_config, upload_id: str, timeout: float = 20) -> bool:  # noqa: ANN001
    """Wait for the upload folder to go: the worker removes it just after recording the job's end."""
    from graft.shared.uploads import upload_dir

    folder = upload_dir(service_config.artifacts_dir, upload_id)
    deadline = time.monotonic() + timeout
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not folder.exists()


def test_upload_removed_when_job_succeeds_or_fails(client, service_config, model: dict,  # noqa: ANN001
                                                    messy: dict[str, Path]) -> None:
    data = {"model_id": model["id"], "file": [(io.BytesIO(messy["odd/gray.jpg"].read_bytes()), "gray.jpg")]}
    response = client.post("/api/v1/jobs/predict", data=data, content_type="multipart/form-data")
    job = wait_for_job(client, response.get_json()["id"])
    assert job["status"] == "succeeded" and _upload_gone(service_config, job["params"]["upload_id"])
    assert len(_all_results(client, job["id"])) == 1  # the results stay: they are in the database

    data = {"model_id": model["id"], "file": [(io.BytesIO(b"junk"), ".DS_Store")]}  # nothing to classify: fails
    response = client.post("/api/v1/jobs/predict", data=data, content_type="multipart/form-data")
    job = wait_for_job(client, response.get_json()["id"])
    assert job["status"] == "failed" and _upload_gone(service_config, job["params"]["upload_id"])


def _upload_with_jobs(service_config, model: dict, count: int) -> tuple[Path, list[str]]:  # noqa: ANN001
    """An upload folder and count queued predict jobs reading it, recorded but not enqueued."""
    from graft.shared.uploads import upload_dir

    upload_id = uuid.uuid4().hex
    folder = upload_dir(service_config.artifacts_dir, upload_id)
    folder.mkdir(parents=True)
    _jpeg(folder / "one.jpg", 5)
    with session_scope(service_config.database_url) as session:
        jobs = [lifecycle.create_job(session, "predict", {"model_id": model["id"], "upload_id": upload_id, "top_k": 1})
                for _ in range(count)]
        return folder, [job.id for job in jobs]


def _cancel(service_config, job_id: str) -> None:  # noqa: ANN001
    with session_scope(service_config.database_url) as session:
        lifecycle.request_cancel(session, session.get(Job, job_id))


def test_upload_kept_while_another_job_uses_it(service_config, model: dict) -> None:  # noqa: ANN001
    from graft.shared.uploads import release_upload

    folder, (first, second) = _upload_with_jobs(service_config, model, 2)
    with session_scope(service_config.database_url) as session:
        assert not release_upload(session, service_config.artifacts_dir, first)  # not finished yet
    _cancel(service_config, first)
    with session_scope(service_config.database_url) as session:
        assert not release_upload(session, service_config.artifacts_dir, first)  # second still queued
    assert folder.is_dir()
    with session_scope(service_config.database_url) as session:
        job = session.get(Job, second)
        lifecycle.transition(session, job, lifecycle.RUNNING, message="test")
        lifecycle.transition(session, job, lifecycle.FAILED, message="test", error="test")
    with session_scope(service_config.database_url) as session:
        assert release_upload(session, service_config.artifacts_dir, second)
    assert not folder.exists()


def test_upload_removed_when_job_is_cancelled(service_config, model: dict) -> None:  # noqa: ANN001
    from graft.worker.predict_runner import run_predict_chunk, start_predict_job

    # Cancelled while queued: the worker that receives its message removes the upload.
    folder, (queued,) = _upload_with_jobs(service_config, model, 1)
    _cancel(service_config, queued)
    start_predict_job(queued, "test", send=lambda indexes: None, config=service_config)
    assert not folder.exists()

    # Cancelled while running: the job ends at once; the chunk that arrives next stores nothing, removes the upload.
    folder, (running,) = _upload_with_jobs(service_config, model, 1)
    sent: list[int] = []
    start_predict_job(running, "test", send=sent.extend, config=service_config)
    assert sent == [0] and folder.is_dir()
    _cancel(service_config, running)
    with session_scope(service_config.database_url) as session:
        assert session.get(Job, running).status == lifecycle.CANCELLED
    assert run_predict_chunk(running, 0, "test", config=service_config)["skipped"]
    assert not folder.exists()
