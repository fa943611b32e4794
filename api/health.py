"""GET /healthz: does the database answer, does Redis answer (no token needed)."""
from __future__ import annotations

from flask import Blueprint, jsonify

from graft.api.context import config
from graft.shared.db import ping
from graft.shared.queue import redis_ping

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():  # noqa: ANN201
    """200 when both answer, else 503, with each part's state."""
    cfg = config()
    checks = {"database": ping(cfg.database_url), "redis": redis_ping(cfg.redis_url)}
    ok = all(checks.values())
    return jsonify({"status": "ok" if ok else "degraded", **checks}), 200 if ok else 503
