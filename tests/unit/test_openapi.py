"""The OpenAPI document, the /docs page and RFC 9457 problems, on an app over SQLite (nothing is queued here)."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate as validate_spec

from graft.api import create_app
from graft.shared.schema import upgrade
from graft.shared.config import Config
from graft.shared.params import TRAIN_PARAMS

TOKEN = "unit-token"
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture()
def api_app(tmp_path: Path) -> Flask:
    """The real app on a private SQLite file; its Celery app never connects, because no test here enqueues."""
    config = Config(database_url=f"sqlite:///{tmp_path / 'graft.db'}", artifacts_dir=tmp_path / "artifacts",
                    data_roots=(tmp_path,), api_tokens=(TOKEN,))
    upgrade(config.database_url)  # as `graft db upgrade` would: create_app refuses a database behind its schema
    return create_app(config)


@pytest.fixture()
def web(api_app: Flask) -> FlaskClient:
    """A test client without a token: the spec and /docs need none."""
    return api_app.test_client()


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def test_spec_is_served_without_a_token_and_valid(web: FlaskClient) -> None:
    response = web.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    spec = response.get_json()
    validate_spec(spec)  # OpenAPI 3.0 schema, $refs resolve
    assert spec["openapi"].startswith("3.0")
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert web.get("/api/v1/jobs").status_code == 401  # the API itself still needs one


def test_every_api_rule_is_in_the_spec(api_app: Flask, web: FlaskClient) -> None:
    """Each URL rule under /api/v1 (and /healthz, /metrics), with each of its methods, is an operation of the document."""
    paths = web.get("/api/v1/openapi.json").get_json()["paths"]
    rules = [r for r in api_app.url_map.iter_rules()
             if r.rule.startswith("/api/v1") or r.rule in ("/healthz", "/metrics")]
    assert len(rules) >= 17
    for rule in rules:
        path = _openapi_path(rule.rule)
        assert path in paths, f"{rule.rule} is not in the spec"
        assert {m.lower() for m in rule.methods & METHODS} <= set(paths[path]), rule.rule
    documented = {(p, m) for p, item in paths.items() for m in item if m.upper() in METHODS}
    assert documented == {(_openapi_path(r.rule), m.lower()) for r in rules for m in r.methods & METHODS}


def test_every_operation_documents_its_errors_as_problems(web: FlaskClient) -> None:
    spec = web.get("/api/v1/openapi.json").get_json()
    for path, item in spec["paths"].items():
        for method, operation in ((m, o) for m, o in item.items() if m.upper() in METHODS):
            if path.startswith("/api/v1/") and not path.endswith("openapi.json"):
                assert "401" in operation["responses"], (method, path)
            for code, response in operation["responses"].items():
                if int(code) >= 400 and not path == "/healthz":
                    name = response["$ref"].rsplit("/", 1)[-1]
                    assert "application/problem+json" in spec["components"]["responses"][name]["content"]


def test_request_schemas_come_from_the_params(web: FlaskClient) -> None:
    """Defaults, bounds and choices in the document are the Param table's, not a second copy."""
    schema = web.get("/api/v1/openapi.json").get_json()["components"]["schemas"]["TrainRequest"]
    assert list(schema["properties"]) == [p.name for p in TRAIN_PARAMS]
    assert schema["additionalProperties"] is False
    for param in TRAIN_PARAMS:
        prop = schema["properties"][param.name]
        assert prop.get("default") == param.default and prop.get("description") == param.help
        assert prop.get("minimum") == param.minimum and prop.get("maximum") == param.maximum
        if param.choices:
            assert set(param.choices) <= set(prop["enum"])


def test_every_invalid_field_is_one_problem(web: FlaskClient) -> None:
    body = {"colour": "blue", "epochs": 0, "mode": "sideways", "pretrained": 1, "learning_rate": "fast"}
    response = web.post("/api/v1/jobs/train", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400 and response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["type"] == "about:blank" and problem["title"] == "Bad Request" and problem["status"] == 400
    assert problem["detail"] == problem["error"] and problem["field"] == "colour"  # unknown fields first
    assert [e["field"] for e in problem["errors"]] == ["colour", "pretrained", "epochs", "learning_rate", "mode"]
    assert problem["errors"][0]["message"] == "unknown field: colour"
    assert problem["errors"][2]["message"] == "field epochs must be >= 1"
    assert all(e["message"] in problem["error"] for e in problem["errors"])
    assert "epochs" in problem["allowed"]


def test_query_and_path_errors_are_problems_too(web: FlaskClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad = web.get("/api/v1/jobs?limit=0&offset=99999999999&status=lost", headers=auth)
    assert bad.status_code == 400 and bad.mimetype == "application/problem+json"
    assert {e["field"] for e in bad.get_json()["errors"]} == {"limit", "offset", "status"}
    missing = web.get("/api/v1/jobs/nope", headers=auth)
    assert missing.status_code == 404 and missing.get_json()["error"] == "no job with id nope"
    assert web.get("/no/such/page").mimetype == "application/problem+json"
    not_allowed = web.put("/api/v1/jobs", headers=auth)
    assert not_allowed.status_code == 405 and "GET" in not_allowed.headers["Allow"]


def test_docs_page_loads_its_assets_from_graft(web: FlaskClient) -> None:
    page = web.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith(("/docs/assets/", "/static/js/")) for a in assets), assets  # all Graft's
    assert "<script>" not in html and "script-src 'self';" in page.headers["Content-Security-Policy"]  # none inline
    assert "/api/v1/openapi.json" in html
    for asset in assets:
        response = web.get(asset)
        assert response.status_code == 200 and len(response.get_data()) > 300, asset
        response.close()


def test_a_form_boolean_is_true_or_false_not_anything(web: FlaskClient) -> None:
    """extract_zip=maybe used to mean true; now it is a 400 naming the field, and nothing is kept."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad = web.post("/api/v1/uploads", data={"file": (io.BytesIO(b"x"), "x.jpg"), "extract_zip": "maybe"},
                   content_type="multipart/form-data", headers=auth)
    assert bad.status_code == 400 and bad.get_json()["field"] == "extract_zip"
    good = web.post("/api/v1/uploads", data={"file": (io.BytesIO(b"x"), "x.zip"), "extract_zip": "false"},
                    content_type="multipart/form-data", headers=auth)
    assert good.status_code == 201 and good.get_json()["added"] == 1
