"""The dashboard's page and the image endpoints (api/gallery.py) on an app over SQLite: token, ids, filters, bounds."""
from __future__ import annotations


import pytest
from flask import Flask
from flask.testing import FlaskClient

from graft.api import create_app
from graft.shared.lifecycle import QUEUED, SUCCEEDED
from graft.shared.config import Config
from graft.shared.db import session_scope
from graft.shared.models import READY, UPLOAD, DatasetRecord, Job, PredictionResult, TrainedModel
from graft.shared.schema import upgrade
from graft.shared.storage import model_dir
from graft.shared.thumbs import THUMBS_DIR, dataset_thumbs_dir, job_thumbs_dir, result_thumb_name, write_predictions

TOKEN = "unit-token"
JPEG = b"\xff\xd8\xff\xe0 a thumbnail"
ITEMS = [{"index": i, "file": f"{t}/{i}.jpg", "true": t, "predicted": p, "confidence": 0.9}
         for i, (t, p) in enumerate([("ants", "ants"), ("ants", "bees"), ("bees", "bees"), ("bees", "ants"),
                                     ("bees", "bees")])]


@pytest.fixture(scope="module")
def gallery_app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """The app on a private SQLite database holding a model with stored predictions, a dataset and a predict job
    (one for the module: every test here only reads)."""
    tmp_path = tmp_path_factory.mktemp("gallery")
    config = Config(database_url=f"sqlite:///{tmp_path / 'graft.db'}", artifacts_dir=tmp_path / "artifacts",
                    data_roots=(tmp_path,), api_tokens=(TOKEN,))
    upgrade(config.database_url)
    folder = model_dir(config.artifacts_dir, "m1")
    write_predictions(folder, ITEMS, total=40)
    (folder / THUMBS_DIR).mkdir()
    for i in (0, 1, 3):
        (folder / THUMBS_DIR / f"{i}.jpg").write_bytes(JPEG)
    (tmp_path / "outside.jpg").write_bytes(b"not yours")
    (folder / THUMBS_DIR / "2.jpg").symlink_to(tmp_path / "outside.jpg")  # a link out of the folder: never served
    (dataset_thumbs_dir(config.artifacts_dir, "d1")).mkdir(parents=True)
    (dataset_thumbs_dir(config.artifacts_dir, "d1") / "0.jpg").write_bytes(JPEG)
    job_thumbs_dir(config.artifacts_dir, "j1").mkdir(parents=True)
    (job_thumbs_dir(config.artifacts_dir, "j1") / result_thumb_name("a/ü b.jpg")).write_bytes(JPEG)
    with session_scope(config.database_url) as session:  # rows as the runners leave them (the states are the point)
        session.add_all([Job(id="t1", kind="train", status=SUCCEEDED), Job(id="t2", kind="train", status=SUCCEEDED),
                         Job(id="j1", kind="predict", status=SUCCEEDED, params={"model_id": "m1"}),
                         Job(id="j2", kind="predict", status=QUEUED, params={"model_id": "m1"})])
        session.flush()
        session.add(TrainedModel(id="m1", job_id="t1", backbone="resnet18", classes=["ants", "bees"], image_size=224,
                                 metrics={}, path=str(folder / "model.pt")))
        session.add(TrainedModel(id="m2", job_id="t2", backbone="resnet18", classes=["ants", "bees"], image_size=224,
                                 metrics={}, path="nowhere"))
        session.add(DatasetRecord(id="d1", name="d", source=UPLOAD, path=str(tmp_path), status=READY, report={}))
        session.add(PredictionResult(job_id="j1", chunk=0, path="a/ü b.jpg", label="ants", confidence=0.8))
    return create_app(config)


@pytest.fixture()
def web_client(gallery_app: Flask) -> FlaskClient:
    """A client sending the token."""
    test_client = gallery_app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return test_client


def test_the_page_and_its_assets_need_no_token(gallery_app: Flask) -> None:
    web = gallery_app.test_client()
    with web.get("/") as page:
        assert page.status_code == 200 and page.mimetype == "text/html" and b"alpine-csp.min.js" in page.data
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    for asset in ("/static/js/app.js", "/static/js/api.js", "/static/css/app.css", "/static/vendor/chart.umd.js",
                  "/static/vendor/alpine-csp.min.js", "/static/vendor/fflate.umd.js"):
        response = web.get(asset)
        assert response.status_code == 200, asset
        response.close()
    assert web.get("/static/../__init__.py").status_code == 404


@pytest.mark.parametrize("url", ["/api/v1/models/m1/predictions", "/api/v1/models/m1/predictions/0/thumbnail",
                                 "/api/v1/datasets/d1/thumbnails/0.jpg",
                                 "/api/v1/jobs/j1/results/thumbnail?path=a/%C3%BC%20b.jpg"])
def test_every_image_endpoint_needs_the_token(gallery_app: Flask, url: str) -> None:
    assert gallery_app.test_client().get(url).status_code == 401


@pytest.mark.parametrize(("query", "indices"), [
    ("", [0, 1, 2, 3, 4]),
    ("?errors_only=true", [1, 3]),
    ("?true=bees", [2, 3, 4]),
    ("?true=bees&predicted=ants", [3]),
    ("?predicted=bees&errors_only=true", [1]),
    ("?true=wasps", []),
])
def test_predictions_filter(web_client: FlaskClient, query: str, indices: list[int]) -> None:
    page = web_client.get(f"/api/v1/models/m1/predictions{query}").get_json()
    assert [i["index"] for i in page["items"]] == indices
    assert page["total"] == 40 and page["stored"] == 5 and page["matching"] == len(indices)
    assert all(i["correct"] == (i["true"] == i["predicted"]) for i in page["items"])


def test_predictions_page_and_link_their_thumbnails(web_client: FlaskClient) -> None:
    first = web_client.get("/api/v1/models/m1/predictions?limit=2").get_json()
    assert [i["index"] for i in first["items"]] == [0, 1] and first["next"]
    second = web_client.get(first["next"]).get_json()
    assert [i["index"] for i in second["items"]] == [2, 3]
    assert [i["thumbnail"] is not None for i in second["items"]] == [True, True]  # 2 is a link: its URL 404s
    with web_client.get(second["items"][1]["thumbnail"]) as thumbnail:
        assert thumbnail.data == JPEG


@pytest.mark.parametrize(("url", "status"), [
    ("/api/v1/models/m1/predictions/0/thumbnail", 200),
    ("/api/v1/models/m1/predictions/2/thumbnail", 404),  # a symlink out of the model's folder
    ("/api/v1/models/m1/predictions/4/thumbnail", 404),  # none written
    ("/api/v1/models/nope/predictions/0/thumbnail", 404),
    ("/api/v1/models/m2/predictions", 404),  # a model trained before predictions were kept
    ("/api/v1/models/nope/predictions", 404),
    ("/api/v1/models/m1/predictions?errors_only=maybe", 400),
    ("/api/v1/datasets/d1/thumbnails/0.jpg", 200),
    ("/api/v1/datasets/d1/thumbnails/..", 404),
    ("/api/v1/datasets/d1/thumbnails/graft.db", 404),
    ("/api/v1/datasets/nope/thumbnails/0.jpg", 404),
    ("/api/v1/jobs/j1/results/thumbnail?path=a/%C3%BC%20b.jpg", 200),
    ("/api/v1/jobs/j1/results/thumbnail?path=../graft.db", 404),  # not a row of the job
    ("/api/v1/jobs/j1/results/thumbnail", 400),
    ("/api/v1/jobs/j2/results/thumbnail?path=a/%C3%BC%20b.jpg", 409),  # not finished: no results yet
    ("/api/v1/jobs/nope/results/thumbnail?path=x", 404),
])
def test_image_endpoints_answer(web_client: FlaskClient, url: str, status: int) -> None:
    response = web_client.get(url)
    assert response.status_code == status, response.data[:200]
    if status == 200:
        assert response.mimetype == "image/jpeg" and response.data == JPEG
        assert response.headers["Cache-Control"].startswith("private")
    else:
        assert response.mimetype == "application/problem+json"
    response.close()
