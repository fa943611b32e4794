"""Property-based: random JSON bodies and random query strings sent to every endpoint of the app (its url_map, with
random or real ids in the path), on real SQLite and PostgreSQL and a real Redis: never a 5xx, and every 4xx is a
JSON problem. Bounded to about 10 s per database; hypothesis prints the failing request to replay."""
from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graft.api import create_app
from graft.shared.config import Config
from graft.shared.db import session_scope
from graft.shared.lifecycle import create_job
from graft.shared.models import TrainedModel, new_id
from graft.shared.schema import upgrade
from tests.helpers import TOKEN, private_env

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
