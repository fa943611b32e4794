"""Graft's HTTP API: a Flask app factory and small blueprints."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from shared.config import Config, get_config
from shared.db import session_factory
from shared.queue import make_celery

log = logging.getLogger(__name__)


def create_app(config: Config | dict[str, Any] | None = None) -> Flask:
    """Build the Flask app; config is a Config, overrides of the environment's Config, or None."""
    if config is None:
        config = get_config()
    elif isinstance(config, dict):
        config = get_config().replace(**config)
    app = Flask(__name__)
    app.config["GRAFT"] = config
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_mb * 1024 * 1024
    app.json.sort_keys = False
    app.extensions["graft_sessions"] = session_factory(config.database_url)
    app.extensions["graft_celery"] = make_celery(config)

    from api import datasets, errors, health, jobs, models, predict
    from api.auth import require_token

    errors.register(app)
    for bp in (jobs.bp, models.bp, predict.bp, datasets.bp):  # on the app, not the shared blueprint: create_app can run more than once
        app.before_request_funcs.setdefault(bp.name, []).append(require_token)
    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp, url_prefix="/api/v1")
    app.register_blueprint(models.bp, url_prefix="/api/v1")
    app.register_blueprint(predict.bp, url_prefix="/api/v1")
    app.register_blueprint(datasets.bp, url_prefix="/api/v1")
    app.teardown_appcontext(_close_session)
    return app


def _close_session(_exc: BaseException | None) -> None:
    from flask import g

    session = g.pop("db", None)
    if session is not None:
        session.close()
