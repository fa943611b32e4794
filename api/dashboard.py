"""The web dashboard: one static page at / and its assets under /static (plain HTML, CSS and JavaScript, no build).

The page holds no data and needs no token; it signs in with one (kept in sessionStorage) and calls /api/v1 like
any client. Its libraries are vendored under api/static/vendor (see README.md there, tools/vendor.sh).
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_file

STATIC = Path(__file__).parent / "static"
bp = Blueprint("dashboard", __name__, static_folder=str(STATIC), static_url_path="/static")


@bp.get("/")
def index() -> Response:
    """The dashboard's single page."""
    # Its Content-Security-Policy is the app's (graft.api.headers): no eval, since it runs Alpine's CSP build.
    return send_file(STATIC / "index.html", mimetype="text/html", max_age=0)
