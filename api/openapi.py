"""The OpenAPI document and the /docs page: flask-smorest over Graft's blueprints, its assets served by Graft.

The spec is generated from the schemas in graft.api.schemas (the same ones that validate requests) and served
without a token at /api/v1/openapi.json: it holds the API's shape, no data. /docs is Swagger UI from the
swagger-ui-bundle package, so the page works offline.
"""
from __future__ import annotations

from functools import reduce
from http import HTTPStatus
from pathlib import Path
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, NoReturn

import flask
import flask_smorest
from flask_smorest.utils import prepare_response
from marshmallow import Schema, ValidationError
from swagger_ui_bundle import swagger_ui_path
from webargs.flaskparser import FlaskParser
from werkzeug.routing import BaseConverter

from graft.api.errors import PROBLEM
from graft.api.schemas import Problem
from graft.api.validation import json_body, problem_of
from graft.shared.params import DATA_SOURCES

SPEC_URL = "/api/v1/openapi.json"
DOCS_URL = "/docs"
DOCS_PAGE = Path(__file__).parent / "static" / "docs.html"  # names SPEC_URL and ASSETS_URL
ASSETS_URL = "/docs/assets"
SECURITY = {"bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "a user's token (graft users add, graft tokens create) or one of "
                                          "GRAFT_API_TOKENS (admin tokens); every /api/v1 request needs one"}}


ACTION_WORDS = ("train", "predict")  # /jobs/train and /jobs/predict: never a job id, so OPTIONS allows only POST
ID_PATTERN = rf"(?!(?:{'|'.join(ACTION_WORDS)})$)[^/\x00]+"


class IdConverter(BaseConverter):
    """A resource id in a path (<id:job_id>): any text but / and NUL, which PostgreSQL cannot compare (a 404), and
    but the words of sibling routes (ACTION_WORDS)."""

    regex = ID_PATTERN


class Parser(FlaskParser):
    """webargs for Graft: 400 (not 422) with every invalid field as a problem; a body must be a JSON object."""

    DEFAULT_VALIDATION_STATUS = 400

    def load_json(self, req: flask.Request, schema: Schema) -> dict[str, Any]:
        """The JSON object (a non-JSON body is a 400 naming what to send)."""
        return json_body()

    def handle_error(self, error: ValidationError, req: flask.Request, schema: Schema, *,  # noqa: ARG002
                     error_status_code: int | None, error_headers: Any) -> NoReturn:  # noqa: ANN401
        """Raise the problem listing every invalid field."""
        messages = error.messages
        if isinstance(messages, dict) and len(messages) == 1:  # webargs keys them by location (json, query)
            (location, inner), = messages.items()
            if location in ("json", "query", "form", "files") and isinstance(inner, dict):
                messages = inner
        raise problem_of(ValidationError(messages), schema)


class Blueprint(flask_smorest.Blueprint):
    """A flask-smorest blueprint whose arguments fail as Graft's problems, and that documents its errors."""

    ARGUMENTS_PARSER = Parser()

    def problems(self, *codes: int) -> Callable[[Callable], Callable]:
        """Document that the view may answer each of codes with a problem (where 401, also 429: api.ratelimit)."""
        if 401 in codes:
            codes = (*codes, 429)

        def decorate(func: Callable) -> Callable:
            return reduce(lambda f, code: self.alt_response(code, response=HTTPStatus(code).name)(f), codes, func)
        return decorate


class GraftApi(flask_smorest.Api):
    """flask-smorest's Api with problem+json error responses and Graft's own error handlers (api.errors)."""

    ERROR_SCHEMA = Problem
    DEFAULT_ERROR_RESPONSE_NAME = None  # each operation lists its own errors, so the contract test checks them

    def _register_error_handlers(self) -> None:
        pass  # api.errors.register installs them for the whole app, not only the API's blueprints

    def _register_responses(self) -> None:
        for status in HTTPStatus:
            if status >= 400:
                response = {"description": status.phrase, "schema": self.ERROR_SCHEMA}
                prepare_response(response, self.spec, PROBLEM)
                self.spec.components.response(status.name, response, lazy=True)


def _version() -> str:
    try:
        return version("graft")
    except PackageNotFoundError:
        return "0"


def make_api(app: flask.Flask) -> GraftApi:
    """The Api on app: the spec at SPEC_URL, Swagger UI at DOCS_URL with its assets at ASSETS_URL."""
    app.config.update(
        API_TITLE="Graft", API_VERSION=_version(), OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/", OPENAPI_JSON_PATH=SPEC_URL, OPENAPI_SWAGGER_UI_PATH=DOCS_URL,
        OPENAPI_SWAGGER_UI_URL=f"{ASSETS_URL}/",
        API_SPEC_OPTIONS={
            "info": {"description": "Transfer learning over HTTP. Errors are RFC 9457 problem details."},
            "components": {"securitySchemes": SECURITY}, "security": [{"bearerAuth": []}],
        },
    )
    app.register_blueprint(flask.Blueprint("docs_assets", __name__, static_folder=str(swagger_ui_path),
                                           static_url_path=ASSETS_URL))
    app.url_map.converters["id"] = IdConverter
    api = GraftApi(app)
    api.register_converter(IdConverter, lambda _converter: {"type": "string", "pattern": f"^{ID_PATTERN}$"})
    # Swagger UI from a page of Graft's that starts it from a file (static/js/docs.js): flask-smorest's own page
    # starts it from an inline script, which the app's Content-Security-Policy refuses (graft.api.headers).
    app.view_functions["api-docs.openapi_swagger_ui"] = _docs_page
    rule = next(r for r in app.url_map.iter_rules() if r.rule == SPEC_URL)
    api.spec.path(rule=rule, operations={"get": {
        "summary": "This OpenAPI document (no token needed: it holds the API's shape, no data).",
        "security": [], "tags": ["docs"],
        "responses": {"200": {"description": "OpenAPI 3", "content": {"application/json": {
            "schema": {"type": "object"}}}}}}})
    return api


def state_cross_field_rules(api: GraftApi) -> None:
    """Write into the document the rules across fields that per-field schemas cannot state: a train request names
    exactly one data source (a string; null counts as not given). Call once every blueprint is registered."""
    train = api.spec.components.schemas.get("TrainRequest")
    if train is not None:
        train["oneOf"] = [{"required": [name], "properties": {name: {"type": "string"}}} for name in DATA_SOURCES]


def _docs_page() -> flask.Response:
    """The /docs page: Swagger UI over SPEC_URL, its assets from Graft."""
    return flask.Response(DOCS_PAGE.read_bytes(), mimetype="text/html")


def multipart(form: type[Schema], description: str | None = None) -> dict[str, Any]:
    """A multipart/form-data request body (files and fields) for @bp.doc(requestBody=...)."""
    body: dict[str, Any] = {"required": True, "content": {"multipart/form-data": {"schema": form}}}
    if description:
        body["description"] = description
    return body


def json_or_multipart(json: type[Schema], form: type[Schema], description: str | None = None) -> dict[str, Any]:
    """A request body that is JSON, or multipart with files (the same fields, sent as form strings)."""
    body = multipart(form, description)
    body["content"] = {"application/json": {"schema": json}, **body["content"]}
    return body
