"""Strict, total input handling against a real `graft api` process (real Redis and SQLite): each bad input is a 400
problem naming its field, and a refused upload stores nothing."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests

from graft.shared.db import session_scope
from graft.shared.lifecycle import create_job
from graft.shared.models import TrainedModel, new_id
from tests.helpers import TOKEN, api_process, model_file, private_env

HUGE = "99999999999999999999999"  # beyond 64 bits
MAX_PARTS = 6


@pytest.fixture(scope="module")
def server(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A real `graft api` allowing MAX_PARTS form parts, with one model (its file never read: no worker runs);
    yields (URL, its artifacts folder, a data folder, the model's id)."""
    base = tmp_path_factory.mktemp("strict")
    data = Path(service_env["GRAFT_DATA_ROOTS"].split(":")[0])
    env = private_env(service_env, base, "graft-strict", GRAFT_ARTIFACTS_DIR=str(base / "artifacts"),
                      GRAFT_MAX_FORM_PARTS=str(MAX_PARTS), GRAFT_MIN_FREE_MB="0")
    with api_process(env) as (url, _proc):
        model_id = new_id()
        model_file(base / "artifacts", model_id).parent.mkdir(parents=True)
        model_file(base / "artifacts", model_id).write_bytes(b"never loaded")
        with session_scope(env["GRAFT_DATABASE_URL"]) as session:
            job = create_job(session, "train", {"data_dir": str(data)})
            session.add(TrainedModel(id=model_id, job_id=job.id, backbone="resnet18", classes=["a", "b"],
                                     image_size=64, metrics={}, path=str(model_file(base / "artifacts", model_id))))
        yield url, base / "artifacts", data, model_id


def _zip(names: list[str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in names:
            archive.writestr(name, b"not really a picture")
    return out.getvalue()


def _files(*names: str) -> list[tuple[str, tuple[str, bytes]]]:
    return [("file", (name, _zip(["in/zip.jpg", "a.jpg"]) if name.endswith(".zip") else b"jpeg")) for name in names]


JSON_BODY = {"Content-Type": "application/json"}
# (id, method, path ({data} is a data folder), requests arguments, the field the 400 names)
CASES: list[tuple[str, str, str, dict[str, Any], str]] = [
    ("json-nan", "POST", "/api/v1/jobs/train", {"data": '{"data_dir": "{data}", "learning_rate": NaN}',
                                                 "headers": JSON_BODY}, "learning_rate"),
    ("json-infinity", "POST", "/api/v1/jobs/train", {"data": '{"data_dir": "{data}", "epochs": -Infinity}',
                                                      "headers": JSON_BODY}, "epochs"),
    ("json-overflow", "POST", "/api/v1/jobs/predict", {"data": '{"model_id": "m", "threshold": 1e999}',
                                                        "headers": JSON_BODY}, "threshold"),
    ("json-int-beyond-64-bits", "POST", "/api/v1/jobs/train",
     {"data": '{"data_dir": "{data}", "seed": ' + HUGE + "}", "headers": JSON_BODY}, "seed"),
    ("json-nested-nan", "POST", "/api/v1/datasets", {"data": '{"path": "{data}", "name": [1, NaN]}',
                                                      "headers": JSON_BODY}, "name[1]"),
    ("json-bare-nan", "POST", "/api/v1/jobs/train", {"data": "NaN", "headers": JSON_BODY}, "body"),
    ("query-offset", "GET", "/api/v1/jobs?offset=" + HUGE, {}, "offset"),
    ("query-limit", "GET", "/api/v1/models?limit=" + HUGE, {}, "limit"),
    ("query-results-limit", "GET", "/api/v1/jobs/x/results?limit=" + HUGE, {}, "limit"),
    ("form-nan", "POST", "/api/v1/jobs/predict", {"data": {"model_id": "m", "threshold": "nan"},
                                                   "files": _files("a.jpg")}, "threshold"),
    ("form-infinity", "POST", "/api/v1/models/{model}/predict", {"data": {"threshold": "inf"},
                                                                 "files": _files("a.jpg")}, "threshold"),
    ("form-int-beyond-64-bits", "POST", "/api/v1/jobs/predict", {"data": {"model_id": "m", "top_k": HUGE},
                                                                 "files": _files("a.jpg")}, "top_k"),
    ("duplicate-file", "POST", "/api/v1/uploads", {"files": _files("a.jpg", "b.jpg", "a.jpg")}, "file"),
    ("duplicate-after-normalising", "POST", "/api/v1/uploads", {"files": _files("x/a.jpg", "./x//a.jpg")}, "file"),
    ("nested", "POST", "/api/v1/uploads", {"files": _files("a", "a/b.jpg")}, "file"),
    ("nested-other-way", "POST", "/api/v1/uploads", {"files": _files("a/b.jpg", "a")}, "file"),
    ("zip-member-clashes", "POST", "/api/v1/uploads", {"files": _files("a.jpg", "pack.zip")}, "file"),
    ("zip-member-clashes-as-folder", "POST", "/api/v1/uploads", {"files": _files("in", "pack.zip")}, "file"),
    ("duplicate-field", "POST", "/api/v1/uploads", {"data": [("extract_zip", "true"), ("extract_zip", "false")],
                                                     "files": _files("a.jpg")}, "extract_zip"),
    ("too-many-parts", "POST", "/api/v1/uploads", {"files": _files(*(f"{i}.jpg" for i in range(MAX_PARTS + 1)))},
     "file"),
    ("too-many-parts-dataset", "POST", "/api/v1/datasets",
     {"data": [(f"f{i}", "x") for i in range(MAX_PARTS + 1)], "files": _files("set.zip")}, "f6"),
]


def _stored(artifacts: Path) -> list[Path]:
    return [p for p in artifacts.rglob("*") if p.is_file()] if artifacts.exists() else []


@pytest.mark.parametrize(("method", "path", "kwargs", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_400_naming_its_field(server: tuple[str, Path, Path, str], method: str, path: str,
                                             kwargs: dict[str, Any], field: str) -> None:
    url, artifacts, data, model_id = server
    path = path.replace("{model}", model_id)
    if isinstance(kwargs.get("data"), str):
        kwargs = {**kwargs, "data": kwargs["data"].replace("{data}", str(data))}
    before = _stored(artifacts)
    response = requests.request(method, f"{url}{path}", headers={"Authorization": f"Bearer {TOKEN}",
                                                                 **kwargs.get("headers", {})},
                                timeout=30, **{k: v for k, v in kwargs.items() if k != "headers"})
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["field"] == field, response.json()
    assert _stored(artifacts) == before  # nothing of a refused request is kept


def test_a_good_upload_still_stores_every_file(server: tuple[str, Path, Path, str]) -> None:
    """The same shapes without the clash are taken: loose files, and a zip unpacked beside them."""
    url, artifacts, _data, _model = server
    response = requests.post(f"{url}/api/v1/uploads", headers={"Authorization": f"Bearer {TOKEN}"},
                             files=_files("b.jpg", "x/a.jpg", "pack.zip"), timeout=30)
    assert response.status_code == 201 and response.json()["added"] == 4, response.text
    folder = artifacts / "uploads" / response.json()["id"]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "a.jpg", "b.jpg", "in/zip.jpg", "x/a.jpg"]


def test_a_multipart_file_name_that_is_not_utf8_is_kept_escaped(server: tuple[str, Path, Path, str]) -> None:
    """A client that sends raw Latin-1 bytes as a file name: stored under its escaped form, not refused."""
    url, artifacts, _data, _model = server
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="caf\xe9 100%.jpg"\r\n\r\njpeg\r\n'
            b"--b--\r\n")
    response = requests.post(f"{url}/api/v1/uploads", data=body, timeout=30,
                             headers={"Authorization": f"Bearer {TOKEN}",
                                      "Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 201 and response.json()["added"] == 1, response.text
    folder = artifacts / "uploads" / response.json()["id"]
    assert [p.name for p in folder.iterdir()] == ["caf%E9 100%25.jpg"]
