"""Security headers on every response: the dashboard, /docs, static files, the API's JSON and its problems alike.

The Content-Security-Policy allows scripts from Graft's own origin only (no inline script, no eval: the dashboard
runs Alpine's CSP build, /docs starts Swagger UI from a file), and no framing by any site. Inline styles stay
allowed: Alpine's :style bindings and Swagger UI set style attributes.
"""
from __future__ import annotations

from flask import Flask, Response

CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' blob: data:",  # blob: the dashboard's thumbnails, fetched with the token; data: Swagger UI's icons
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",  # dashboard URLs hold ids: they go to no other site
}


def _secure(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def install(app: Flask) -> None:
    """Add the headers to every response of app (a view that sets one of them keeps its own)."""
    app.after_request(_secure)
