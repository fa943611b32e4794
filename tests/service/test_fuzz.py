"""Property-based: random JSON bodies and random query strings sent to every endpoint of the app (its url_map, with
random or real ids in the path), on real SQLite and PostgreSQL and a real Redis: never a 5xx, and every 4xx is a
JSON problem. Bounded to about 10 s per database; hypothesis prints the failing request to replay. Then file names:
a table of bad ones (2,100 levels, a 300-byte part, NUL, `..`, absolute, backslashes) in every place a client
names a file, and random ones, sent to a real `graft api`: a 400 naming the rule, or stored inside the upload."""
from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graft.api import create_app
from graft.shared.config import Config
from graft.shared.db import session_scope
from graft.shared.lifecycle import create_job
from graft.shared.models import TrainedModel, new_id
from graft.shared.schema import upgrade
from tests.helpers import TOKEN, api_process, model_file, private_env

EXAMPLES = 300  # per database: about 10 s on two busy cores
# Names the schemas know, so that random bodies and queries also reach the checks past "unknown field".
BODY_NAMES = ("data_dir", "dataset_id", "model_id", "input_dir", "upload_id", "path", "name", "epochs", "batch_size",
              "learning_rate", "image_size", "val_split", "seed", "backbone", "pretrained", "top_k", "threshold",
              "precision", "runtime", "recursive", "chunk_size", "callback_url", "time_budget_s", "freeze_epochs")
QUERY_NAMES = ("limit", "offset", "after", "status", "kind", "job_id", "format")
NUMBERS = st.one_of(st.integers(), st.integers(min_value=2**63 - 2, max_value=2**80),
                    st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=40))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=10), inner, max_size=4), max_leaves=12)
BODIES = st.one_of(
    st.dictionaries(st.sampled_from(BODY_NAMES) | st.text(max_size=12), JSON_VALUES, max_size=6),
    JSON_VALUES,
    st.binary(max_size=64).map(lambda raw: raw.decode("latin-1")),  # not JSON at all
)
QUERY_VALUES = st.one_of(st.text(max_size=30), NUMBERS.map(str), st.sampled_from(("json", "csv", "queued", "onnx")))
QUERIES = st.dictionaries(st.sampled_from(QUERY_NAMES) | st.text(min_size=1, max_size=10), QUERY_VALUES, max_size=4)
PATH_TEXT = st.text(min_size=1, max_size=40).filter(lambda s: "/" not in s and "\x00" not in s and s not in (".", ".."))


def _zip() -> io.BytesIO:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in ("a/1.png", "a/2.png", "b/1.png", "b/2.png"):
            archive.writestr(name, b"not really a png")
    out.seek(0)
    return out


def _real_ids(app, env: dict[str, str]) -> list[str]:  # noqa: ANN001
    """A queued job, a model, an upload and a dataset, made through the app: ids the paths may carry."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    data_dir = env["GRAFT_DATA_ROOTS"].split(":")[0]
    job = client.post("/api/v1/jobs/train", json={"data_dir": data_dir}).get_json()["id"]
    with session_scope(env["GRAFT_DATABASE_URL"]) as session:
        model = TrainedModel(id=new_id(), job_id=create_job(session, "train", {"data_dir": data_dir}).id,
                             backbone="resnet18", classes=["a", "b"], image_size=64, metrics={}, path="/nowhere/m.pt")
        session.add(model)
        model_id = model.id
    upload = client.post("/api/v1/uploads", data={"file": (io.BytesIO(b"x"), "x.jpg")},
                         content_type="multipart/form-data").get_json()["id"]
    dataset = client.post("/api/v1/datasets", data={"file": (_zip(), "set.zip")},
                          content_type="multipart/form-data").get_json()["id"]
    return [job, model_id, upload, dataset]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fuzzed(request: pytest.FixtureRequest, service_env: dict[str, str], tmp_path):  # noqa: ANN001, ANN201
    """(app, real ids) on a database of the test's own: SQLite, or a private PostgreSQL schema."""
    overrides = {"GRAFT_ARTIFACTS_DIR": str(tmp_path / "artifacts"), "GRAFT_SYNC_PREDICT_WAIT_SECONDS": "1",
                 "GRAFT_MIN_FREE_MB": "0"}
    if request.param == "postgres":
        overrides["GRAFT_DATABASE_URL"] = request.getfixturevalue("empty_postgres_url")
    env = private_env(service_env, tmp_path, "graft-fuzz", **overrides)
    upgrade(env["GRAFT_DATABASE_URL"])
    app = create_app(Config.from_env(env))
    return app, _real_ids(app, env)


def _operations(app) -> list[tuple[str, str]]:  # noqa: ANN001
    return sorted((rule.rule, method) for rule in app.url_map.iter_rules() if rule.endpoint != "static"
                  for method in rule.methods - {"HEAD", "OPTIONS"})


def test_random_requests_never_get_a_5xx(fuzzed) -> None:  # noqa: ANN001
    app, ids = fuzzed
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    operations = _operations(app)
    assert len(operations) > 20  # every endpoint is in the draw
    seen: set[tuple[str, str]] = set()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(operation=st.sampled_from(operations), path_ids=st.lists(st.sampled_from(ids) | PATH_TEXT, min_size=3,
                                                                      max_size=3),
           body=BODIES, query=QUERIES, as_json=st.booleans())
    def one_request(operation: tuple[str, str], path_ids: list[str], body: Any, query: dict[str, str],
                    as_json: bool) -> None:  # noqa: ANN401
        rule, method = operation
        values = iter(path_ids)
        path = re.sub(r"<[^>]+>", lambda _m: quote(next(values), safe=""), rule)
        text = json.dumps(body) if as_json or not isinstance(body, str) else body  # json.dumps writes NaN
        response = client.open(path, method=method, query_string=query, data=text if method != "GET" else None,
                               content_type="application/json")
        seen.add(operation)
        with response:  # a file the dashboard serves stays open until the response is closed
            assert response.status_code < 500, (method, path, query, text, response.get_data(as_text=True)[:500])
            if response.status_code >= 400:
                problem = response.get_json(silent=True)
                assert response.mimetype == "application/problem+json" and isinstance(problem, dict), \
                    (method, path, response.status_code, response.get_data(as_text=True)[:300])
                assert problem["status"] == response.status_code and problem["error"]

    one_request()
    assert len(seen) > len(operations) // 2, f"only {len(seen)} of {len(operations)} operations drawn"


def _zip_named(name: str) -> bytes:
    """A zip holding one member called name, written byte for byte (zipfile itself cuts a name at NUL)."""
    stand_in = name.replace("\x00", "\x01")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("ok/fine.png", b"not really a png")
        archive.writestr(stand_in, b"not really a png")
    return out.getvalue().replace(stand_in.encode(), name.encode())


def _tar_named(name: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.GNU_FORMAT) as archive:
        for member in ("ok/fine.png", name):
            info = tarfile.TarInfo(member)
            info.size = 4
            archive.addfile(info, io.BytesIO(b"data"))
    return out.getvalue()


# (id, name, what an upload answers for it as a multipart file name, and as an archive member: a 400's code, or
# =where the file is stored inside the upload). Datasets (zip and tar) answer as uploads' members do, the
# synchronous predict as uploads' file names do (its 2xx is a 202: no worker runs).
BAD_NAMES = [
    ("2100-levels", "/".join(["d"] * 2100) + "/x.jpg", "too_deep", "too_deep"),
    ("300-byte-part", "p" * 296 + ".jpg", "name_too_long", "name_too_long"),
    ("1100-byte-name", "/".join(["n" * 99] * 11) + ".jpg", "name_too_long", "name_too_long"),
    ("nul", "a\x00b.jpg", "bad_name", "=a"),  # zipfile reads a member's name up to its NUL
    ("dotdot", "../x.jpg", "parent_path", "parent_path"),
    ("dotdot-backslash", "..\\..\\x.jpg", "parent_path", "parent_path"),
    ("absolute", "/etc/x.jpg", "=etc/x.jpg", "absolute_path"),  # a browser's file name: kept relative
    ("drive", "C:\\x.jpg", "=C:/x.jpg", "absolute_path"),
    ("backslash", "a\\b.jpg", "=a/b.jpg", "=a/b.jpg"),
]


@pytest.fixture(scope="module")
def named_server(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A real `graft api` (no worker) and a model of the admin's: (URL, artifacts folder, model id)."""
    base = tmp_path_factory.mktemp("names")
    env = private_env(service_env, base, "graft-names", GRAFT_ARTIFACTS_DIR=str(base / "artifacts"),
                      GRAFT_MIN_FREE_MB="0", GRAFT_SYNC_PREDICT_WAIT_SECONDS="1")
    upgrade(env["GRAFT_DATABASE_URL"])
    model_id = new_id()
    weights = model_file(base / "artifacts", model_id)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"never loaded")
    with session_scope(env["GRAFT_DATABASE_URL"]) as session:
        session.add(TrainedModel(id=model_id, job_id=create_job(session, "train", {"data_dir": "/x"}).id,
                                 backbone="resnet18", classes=["a", "b"], image_size=64, metrics={}, path=str(weights)))
    with api_process(env) as (url, _proc):
        yield url, base / "artifacts", model_id


def _post_file(url: str, path: str, name: str, data: bytes) -> requests.Response:
    """POST one multipart file part called name, its bytes exactly (a quoted-string: backslash and quote escaped;
    surrogate-escaped characters as the bytes they stand for), as a careful client sends it."""
    quoted = name.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8", "surrogateescape")
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + quoted + b'"\r\n\r\n' + data
            + b"\r\n--b--\r\n")
    return requests.post(f"{url}{path}", data=body, timeout=30, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "multipart/form-data; boundary=b"})


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def _check(response: requests.Response, expected: str, artifacts: Path, before: set[Path]) -> None:
    """A 400 with expected's code and nothing stored, or (=where) a 2xx that stored the file there only."""
    assert response.status_code < 500, response.text[:300]
    if not expected.startswith("="):
        problem = response.json()
        assert response.status_code == 400 and problem["code"] == expected and problem["field"] == "file", problem
        assert response.headers["Content-Type"] == "application/problem+json"
        assert _files_under(artifacts) == before
        return
    assert response.status_code in (201, 202), response.text[:300]
    if response.status_code == 201:  # an upload: the file is inside its folder, where the name says
        folder = artifacts / "uploads" / response.json()["id"]
        assert folder / expected[1:] in _files_under(folder), sorted(_files_under(folder))
    new = _files_under(artifacts) - before
    assert all(p.is_relative_to(artifacts / "uploads") or p.is_relative_to(artifacts / "datasets") for p in new), new


CARRIERS = ["multipart-upload", "zip-upload", "zip-dataset", "tar-dataset", "multipart-predict-now"]


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize(("name", "as_file", "as_member"), [r[1:] for r in BAD_NAMES], ids=[r[0] for r in BAD_NAMES])
def test_bad_file_names_are_a_400_or_stay_inside(named_server, carrier: str, name: str, as_file: str,  # noqa: ANN001
                                                 as_member: str) -> None:
    """Every bad name, in every place a client names a file, against a real server: never a 5xx (a 2,100-level
    name used to be a 500, `File name too long`), a 400 naming its rule, or stored inside the upload."""
    url, artifacts, model_id = named_server
    expected = as_file if carrier.startswith("multipart") else as_member
    body = {"multipart-upload": ("/api/v1/uploads", name, b"jpeg"), "zip-upload": ("/api/v1/uploads", "x.zip",
                                                                                   _zip_named(name)),
            "zip-dataset": ("/api/v1/datasets", "set.zip", _zip_named(name)),
            "tar-dataset": ("/api/v1/datasets", "set.tar.gz", _tar_named(name)),
            "multipart-predict-now": (f"/api/v1/models/{model_id}/predict", name, b"jpeg")}[carrier]
    before = _files_under(artifacts)
    response = _post_file(url, *body)
    _check(response, expected, artifacts, before)


NAME_PIECES = st.sampled_from(["a", "..", ".", "", "\\", "/", "C:", "\x00", "é", "\udcff", "n" * 200, "%", " "])


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(NAME_PIECES, min_size=1, max_size=40), depth=st.integers(0, 40))
def test_random_file_names_never_get_a_5xx(named_server, pieces: list[str], depth: int) -> None:  # noqa: ANN001
    """Random names (pieces, then depth levels of "d/") as multipart file names: a 400 problem, or stored inside."""
    url, artifacts, _model = named_server
    name = "".join(pieces) + "/d" * depth
    response = _post_file(url, "/api/v1/uploads", name, b"jpeg")
    assert response.status_code in (201, 400), (name, response.text[:300])
    if response.status_code == 201:
        folder = (artifacts / "uploads" / response.json()["id"]).resolve()
        assert all(p.resolve().is_relative_to(folder) for p in folder.rglob("*"))
    else:
        assert response.headers["Content-Type"] == "application/problem+json" and response.json()["field"] == "file"
