"""Validate requests with the schemas of graft.api.schemas (built from graft.shared.params): every bad field at once."""
from __future__ import annotations

from typing import Any

import math

from flask import request
from marshmallow import Schema, ValidationError

from graft.api.context import db
from graft.api.errors import APIError, validation_problem
from graft.api.forms import read_form
from graft.api.owners import principal
from graft.api.strictjson import INT64
from graft.api.schemas import FORM_BOOLS, PredictRequest, TrainRequest
from graft.shared.config import Config
from graft.shared.webhook_secrets import has_live_secret
from graft.shared.webhooks import Policy, WebhookRefused, check_submitted, own_addresses, service_hosts

# The request bodies by kind (the schemas are generated from shared/params.py: the one home of each parameter).
TRAIN_SCHEMA: type[Schema] = TrainRequest
PREDICT_SCHEMA: type[Schema] = PredictRequest


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400."""
    body = request.get_json(silent=True)
    limit = request.max_content_length
    if limit is not None and len(request.get_data(cache=True)) >= limit:
        # werkzeug stops reading a chunked body at the limit without a word: a body that fills it was cut short.
        raise APIError(413, f"request body too large: the limit is {limit} bytes for a request that is not an upload",
                       limit_bytes=limit)
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object (Content-Type: application/json)")
    return body


def problem_of(error: ValidationError, schema: type[Schema] | Schema) -> APIError:
    """The 400 that lists every invalid field of error, in the schema's field order."""
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    return validation_problem(dict(messages), list(schema._declared_fields))


def validate(body: dict[str, Any], schema: type[Schema]) -> dict[str, Any]:
    """Check body against schema and return it with defaults filled in; a 400 names every invalid field."""
    try:
        if not isinstance(body, dict):
            raise ValidationError({"_schema": ["request body must be a JSON object"]})
        return schema().load(body)
    except ValidationError as exc:
        raise problem_of(exc, schema) from None


def check_callback(params: dict[str, Any], config: Config) -> None:
    """A 400 naming callback_url unless the server and the caller can sign callbacks and the URL passes the checks
    that need no DNS (syntax, scheme, an IP literal's address); the worker resolves the name when it sends."""
    url = params.get("callback_url")
    if url is None:
        return
    if not config.webhook_keys:
        raise APIError(400, "callback_url: webhooks are off on this server (GRAFT_WEBHOOK_KEY is unset)",
                       field="callback_url")
    try:
        # Only the literal forms of Redis's and the database's hosts: no DNS query on a request thread.
        check_submitted(url, Policy.of(config.webhook_allow,
                                       own_addresses(service_hosts(config.database_url, config.redis_url), None)))
    except WebhookRefused as exc:
        raise APIError(400, f"callback_url: {exc}", field="callback_url") from None
    who = principal()
    if who.user_id is None:
        raise APIError(400, "callback_url: callbacks are signed with their owner's webhook secret, and this token "
                       "belongs to no user (use a user's token: graft users add NAME)", field="callback_url")
    if not has_live_secret(db(), who.user_id):
        raise APIError(400, f"callback_url: {who.name} has no webhook secret to sign callbacks with (the operator "
                       f"makes one: graft webhook-secrets create {who.name})", field="callback_url")


FORM_NUMBER_CHARS = 64  # a number in a form field is short; int() of a huge digit string is not free


def form_bool(name: str, default: bool) -> bool:
    """A boolean multipart field of the request (absent: default), or a 400 naming it."""
    raw = read_form().fields.get(name)
    if raw is None:
        return default
    if raw not in FORM_BOOLS:  # exactly as the document lists them
        raise APIError(400, f"field {name} must be one of {sorted(FORM_BOOLS)}", field=name)
    return FORM_BOOLS[raw]


def form_values(form: dict[str, str], schema: type[Schema]) -> dict[str, Any]:
    """Multipart form strings converted to the schema's types where they parse (validate() reports the rest)."""
    params = {name: field.metadata.get("param") for name, field in schema._declared_fields.items()}
    out: dict[str, Any] = {}
    for name, raw in form.items():
        spec = params.get(name)
        value: Any = raw
        if spec is not None and spec.nullable and raw.strip().lower() in ("", "null", "none"):
            value = None
        elif spec is not None and spec.type is bool and raw.strip().lower() in FORM_BOOLS:
            value = FORM_BOOLS[raw.strip().lower()]
        elif spec is not None and spec.type in (int, float) and len(raw) <= FORM_NUMBER_CHARS:
            try:
                number = spec.type(raw)
            except ValueError:
                number = None
            # nan, inf and integers beyond 64 bits stay text, which the schema refuses naming the field
            if number is not None and math.isfinite(number) and INT64[0] <= number <= INT64[1]:
                value = number
        out[name] = value
    return out
