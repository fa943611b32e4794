"""Validate request bodies against schemas built from graft.shared.params: a bad field is a 400 that names it."""
from __future__ import annotations

from typing import Any

from flask import request

from graft.api.errors import APIError
from graft.shared.config import Config
from graft.shared.params import PREDICT_PARAMS, TRAIN_PARAMS, Param
from graft.shared.webhooks import WebhookRefused, vet_url


def _type_ok(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object (Content-Type: application/json)")
    return body


def validate(body: dict[str, Any], schema: dict[str, Param]) -> dict[str, Any]:
    """Check body against schema and return it with defaults filled in."""
    unknown = sorted(set(body) - set(schema))
    if unknown:
        raise APIError(400, f"unknown field: {unknown[0]}", field=unknown[0], allowed=sorted(schema))
    out: dict[str, Any] = {}
    for name, spec in schema.items():
        if name not in body:
            if spec.required:
                raise APIError(400, f"missing required field: {name}", field=name)
            out[name] = spec.default
            continue
        value = body[name]
        if value is None and spec.nullable:
            out[name] = None
            continue
        if not _type_ok(value, spec.type):
            raise APIError(400, f"field {name} must be of type {spec.type.__name__}", field=name)
        if spec.choices is not None and value not in spec.choices:
            raise APIError(400, f"field {name} must be one of {list(spec.choices)}", field=name)
        if spec.minimum is not None and value < spec.minimum:
            raise APIError(400, f"field {name} must be >= {spec.minimum}", field=name)
        if spec.maximum is not None and value > spec.maximum:
            raise APIError(400, f"field {name} must be <= {spec.maximum}", field=name)
        out[name] = float(value) if spec.type is float else value
    return out


def check_callback(params: dict[str, Any], config: Config) -> None:
    """A 400 naming callback_url unless it is an http(s) URL whose every address is in GRAFT_WEBHOOK_ALLOW."""
    url = params.get("callback_url")
    if url is None:
        return
    if not config.webhook_secret:
        raise APIError(400, "callback_url: webhooks are off on this server (GRAFT_WEBHOOK_SECRET is unset)",
                       field="callback_url")
    try:
        vet_url(url, config.webhook_allow)  # resolves the name only: nothing is sent to it here
    except WebhookRefused as exc:
        raise APIError(400, f"callback_url: {exc}", field="callback_url") from None


# The params themselves, by name: graft.shared.params is the one home (the worker and the CLI read it too).
TRAIN_SCHEMA: dict[str, Param] = {p.name: p for p in TRAIN_PARAMS}
PREDICT_SCHEMA: dict[str, Param] = {p.name: p for p in PREDICT_PARAMS}


def form_values(form: dict[str, str], schema: dict[str, Param]) -> dict[str, Any]:
    """Multipart form strings converted to the schema's types where they parse (validate() reports the rest)."""
    out: dict[str, Any] = {}
    for name, raw in form.items():
        spec = schema.get(name)
        value: Any = raw
        if spec is not None and spec.nullable and raw.strip().lower() in ("", "null", "none"):
            value = None
        elif spec is not None and spec.type is bool and raw.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
            value = raw.strip().lower() in ("true", "1", "yes")
        elif spec is not None and spec.type in (int, float):
            try:
                value = spec.type(raw)
            except ValueError:
                pass
        out[name] = value
    return out
