"""Newest-first pagination shared by the list endpoints: {"items": [...], "next": url or null}."""
from __future__ import annotations

from typing import Any, Callable

from flask import jsonify, request, url_for
from sqlalchemy import Select

from graft.api.context import db
from graft.api.errors import APIError

MAX_PAGE = 100


def _page_args() -> tuple[int, int]:
    try:
        limit = int(request.args.get("limit", 20))
        offset = int(request.args.get("offset", 0))
    except ValueError:
        raise APIError(400, "limit and offset must be integers") from None
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise APIError(400, f"limit must be in 1..{MAX_PAGE} and offset >= 0")
    return limit, offset


def page(query: Select, endpoint: str, serialize: Callable[[list[Any]], list[dict]], **filters: str):  # noqa: ANN201
    """Run query (newest first) one page at a time: {"items": [...], "next": url or null}."""
    limit, offset = _page_args()
    rows = db().scalars(query.offset(offset).limit(limit + 1)).all()
    more = len(rows) > limit
    items = serialize(rows[:limit])
    nxt = url_for(endpoint, limit=limit, offset=offset + limit, **filters) if more else None
    return jsonify({"items": items, "next": nxt})
