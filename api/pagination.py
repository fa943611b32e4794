"""Newest-first pagination shared by the list endpoints: {"items": [...], "next": url or null}.

?limit= and ?offset= are validated by graft.api.schemas.PageArgs before a view runs.
"""
from __future__ import annotations

from typing import Any, Callable

from flask import Response, jsonify, url_for
from sqlalchemy import Select

from graft.api.context import db

MAX_PAGE = 100
RESULTS_PAGE, RESULTS_MAX_PAGE = 100, 1000  # a predict job's rows (keyset by path, in api.results)
MAX_OFFSET = 2**31 - 1  # a larger OFFSET overflows the database's integer (a 500); no list is that long


def page(query: Select, endpoint: str, serialize: Callable[[list[Any]], list[dict]], args: dict[str, Any],
         **filters: str) -> Response:
    """Run query (newest first) one page at a time, args being the validated ?limit= and ?offset= (PageArgs)."""
    limit, offset = args["limit"], args["offset"]
    rows = db().scalars(query.offset(offset).limit(limit + 1)).all()
    more = len(rows) > limit
    items = serialize(rows[:limit])
    more = more and offset + limit <= MAX_OFFSET  # the next page would be past what a request may ask for
    nxt = url_for(endpoint, limit=limit, offset=offset + limit, **filters) if more else None
    return jsonify({"items": items, "next": nxt})
