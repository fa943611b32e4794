"""Graft's HTTP API: a Flask app factory and one small blueprint per concern. It never imports graft.worker."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Flask

from graft.api import (
    dashboard, datasets, errors, gallery, headers, health, jobs, metrics, models, predict_jobs, predict_now, ratelimit,
    results, uploads,
)
from graft.api.admission import admit_body, close_after_refusal
from graft.api.auth import require_admin, require_token
from graft.api.openapi import make_api, state_cross_field_rules
from graft.api.strictjson import StrictJSONProvider
from graft.shared.config import Config, get_config
from graft.shared.db import session_factory
from graft.shared.queue import make_celery
from graft.shared.schema import ensure_schema

log = logging.getLogger(__name__)


def create_app(config: Config | dict[str, Any] | None = None) -> Flask:
    """Build the Flask app; config is a Config, overrides of the environment's Config, or None.

    Raises graft.shared.schema.SchemaOutOfDate when the database is not at this code's schema (`graft db upgrade`).
    """
    if config is None:
        config = get_config()
    elif isinstance(config, dict):
        config = get_config().replace(**config)
    ensure_schema(config)
    # Graft keeps nothing in Flask's instance folder; naming one spares Flask its search for the package folder,
    # which cannot see through the editable install of the `graft` namespace package.
    app = Flask(__name__, instance_path=str(Path(config.artifacts_dir).absolute() / "flask-instance"),
                static_folder=None)  # the dashboard blueprint serves api/static
    app.config["GRAFT"] = config
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_mb * 1024 * 1024
    app.json = StrictJSONProvider(app)  # NaN, Infinity and integers beyond 64 bits in a body: a 400 naming the field
    app.json.sort_keys = False
    app.extensions["graft_sessions"] = session_factory(config.database_url)
    app.extensions["graft_celery"] = make_celery(config)

    api = make_api(app)  # the OpenAPI document (no token: it holds no data) and /docs
    errors.register(app)
    ratelimit.install(app, config)  # failed authentications per client address (counted by require_token)
    headers.install(app)  # CSP, nosniff and no framing on every response
    app.after_request(close_after_refusal)  # a refused body's connection is closed, not held for its rest
    api.register_blueprint(health.bp)
    for module in (jobs, models, uploads, predict_jobs, results, predict_now, datasets, gallery):
        # On the app, not on the shared blueprint object: create_app can run more than once. admit_body checks the
        # token first (no disk or quota news for strangers), then the body's size, quota and the disk, before any
        # view reads the body.
        app.before_request_funcs.setdefault(module.bp.name, []).append(admit_body)
        api.register_blueprint(module.bp, url_prefix="/api/v1")
    app.before_request_funcs.setdefault(metrics.bp.name, []).extend([require_token, require_admin])  # every user's
    api.register_blueprint(metrics.bp)
    state_cross_field_rules(api)
    app.register_blueprint(dashboard.bp)  # the web page at /: no data, no token (it signs in with one)
    app.teardown_appcontext(_close_session)
    return app


def _close_session(_exc: BaseException | None) -> None:
    from flask import g

    session = g.pop("db", None)
    if session is not None:
        session.close()
