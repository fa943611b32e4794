"""GET /healthz: does the database answer, does Redis answer, is there disk left (no token needed)."""
from __future__ import annotations

from flask import Response, jsonify

from graft.api.context import config
from graft.api.openapi import Blueprint
from graft.api.schemas import Health
from graft.shared.db import ping
from graft.shared.queue import redis_ping
from graft.shared.retention import artifacts_disk

bp = Blueprint("health", __name__, description="Is the service up (no token needed).")


@bp.get("/healthz")
@bp.doc(security=[])
@bp.response(200, Health)
@bp.alt_response(503, schema=Health, description="the database or Redis does not answer")
def healthz() -> Response:
    """200 when both answer, else 503, with each part's state and the artifacts disk's free space."""
    cfg = config()
    checks = {"database": ping(cfg.database_url), "redis": redis_ping(cfg.redis_url)}
    ok = all(checks.values())
    free, nearly_full = artifacts_disk(cfg)
    # A nearly full disk refuses uploads (507) but the service still runs: reported, not a 503.
    disk = {"artifacts_free_bytes": free, "uploads_refused": nearly_full}
    response = jsonify({"status": "ok" if ok else "degraded", **checks, "disk": disk})
    response.status_code = 200 if ok else 503
    return response
