"""JSON errors for every failure: {"error": "...", ...} with the right status, never HTML or a traceback."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered as JSON with status and optional extra fields."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def error_response(status: int, message: str, **extra: Any):  # noqa: ANN201 - Flask response tuple
    """A JSON error body and status."""
    return jsonify({"error": message, "status": status, **extra}), status


def register(app: Flask) -> None:
    """Install the JSON error handlers on app."""

    @app.errorhandler(APIError)
    def _api_error(exc: APIError):  # noqa: ANN202
        return error_response(exc.status, exc.message, **exc.extra)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # noqa: ANN202
        message = {413: "request body too large"}.get(exc.code or 500, exc.description or exc.name)
        return error_response(exc.code or 500, message)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # noqa: ANN202
        log.exception("unhandled error")
        return error_response(500, "internal server error")
