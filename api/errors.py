"""RFC 9457 problem details for every failure, never HTML or a traceback.

Every error is `application/problem+json` with `type`, `title`, `status` and `detail`, plus Graft's own `error`
(the same text as `detail`, which older clients read) and, where they apply, `field`, `code` and for an invalid
request `errors`, one entry per invalid field.
"""
from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Iterator

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
UNKNOWN = "unknown field"  # the request schemas' messages, rendered as Graft has always worded them
REQUIRED = "missing required field"


class APIError(Exception):
    """An error answered as a problem with status and optional extra fields."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:  # noqa: ANN401
        super().__init__(message)
        self.status, self.message, self.extra, self.headers = status, message, extra, headers or {}


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_response(status: int, message: str, **extra: Any) -> Response:  # noqa: ANN401
    """A problem+json response; type is about:blank, so the title is the status's phrase (RFC 9457 §4.2.1)."""
    body = {"type": "about:blank", "title": _title(status), "status": status, "detail": message, "error": message}
    response = jsonify({**body, **extra})
    response.status_code, response.mimetype = status, PROBLEM
    return response


def _flatten(messages: Any) -> Iterator[str]:  # noqa: ANN401 - marshmallow's str, list or dict of them
    if isinstance(messages, dict):
        for value in messages.values():
            yield from _flatten(value)
    elif isinstance(messages, (list, tuple)):
        for value in messages:
            yield from _flatten(value)
    else:
        yield str(messages)


def _render(field: str, message: str) -> str:
    if message == UNKNOWN:
        return f"unknown field: {field}"
    if message == REQUIRED:
        return f"missing required field: {field}"
    return f"field {field} {message}" if message.startswith("must") else f"{field}: {message}"


def validation_problem(messages: dict[str, Any], order: list[str]) -> APIError:  # noqa: ANN401
    """One 400 for every invalid field of a request (marshmallow's messages), unknown fields first, then in order."""
    whole = list(_flatten(messages.pop("_schema", [])))
    if whole and not messages:
        return APIError(400, whole[0])
    rank = {name: i for i, name in enumerate(order)}
    flat = [(field, message) for field, value in messages.items() for message in _flatten(value)]
    flat.sort(key=lambda e: (e[1] != UNKNOWN, rank.get(e[0], len(rank)), e[0]))
    errors = [{"field": field, "message": _render(field, message)} for field, message in flat]
    extra: dict[str, Any] = {"field": errors[0]["field"], "errors": errors}
    if any(message == UNKNOWN for _, message in flat):
        extra["allowed"] = sorted(order)
    return APIError(400, "; ".join(e["message"] for e in errors), **extra)


def register(app: Flask) -> None:
    """Install the problem handlers on app."""

    @app.errorhandler(APIError)
    def _api_error(exc: APIError) -> Response:
        response = error_response(exc.status, exc.message, **exc.extra)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        message = {413: "request body too large"}.get(exc.code or 500, exc.description or exc.name)
        response = error_response(exc.code or 500, message)
        if exc.code == 405 and exc.valid_methods:  # RFC 9110: a 405 says what is allowed
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal server error")
