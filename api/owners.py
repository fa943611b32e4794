"""Who is asking (g.principal, set by graft.api.auth) and the one ownership rule every endpoint goes through.

A user sees and acts only on the jobs, models, datasets and uploads it owns: anyone else's id answers 404, as an
id that does not exist does, so ids cannot be probed. An admin sees everything, including rows with no owner
(made before owners existed, or with a GRAFT_API_TOKENS token).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from flask import g
from sqlalchemy import Select, select

from graft.api.context import db
from graft.api.errors import APIError

T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a user (user_id set), or an admin without a user row (user_id None)."""

    user_id: str | None
    name: str
    admin: bool
    max_jobs: int | None = None  # the user's own quota overrides (None: the configured default)
    max_storage_mb: int | None = None


LEGACY_ADMIN = Principal(None, "GRAFT_API_TOKENS", admin=True)
NO_AUTH = Principal(None, "anonymous (GRAFT_INSECURE_NO_AUTH)", admin=True)


def principal() -> Principal:
    """The caller of this request (set by the token check before any view runs)."""
    return g.principal


def owner_id() -> str | None:
    """The owner to record on a new row: the caller's user id (None for an admin without a user row)."""
    return principal().user_id


def visible(query: Select, model: Any) -> Select:  # noqa: ANN401 - a mapped class with owner_id
    """query restricted to the caller's own rows (an admin's is unchanged)."""
    who = principal()
    return query if who.admin else query.where(model.owner_id == who.user_id)


def may_see(row: Any) -> bool:  # noqa: ANN401 - any row with owner_id
    """True when the caller may see and act on row."""
    who = principal()
    return who.admin or (who.user_id is not None and row.owner_id == who.user_id)


MIN_PREFIX = 8  # characters of an id that find its row: the dashboard shows 8


def get_owned(model: type[T], row_id: str, what: str, **extra: Any) -> T:  # noqa: ANN401
    """The row of model with row_id (or the one the caller may see whose id starts with it, MIN_PREFIX characters or
    more) if the caller may see it; otherwise 404, exactly as for an unknown id. Views use the row's own id after."""
    row = db().get(model, row_id)
    if row is None and len(row_id) >= MIN_PREFIX:
        # Only among the caller's own rows, so a prefix says nothing about anyone else's ids.
        query = visible(select(model).where(model.id.startswith(row_id, autoescape=True)), model).limit(2)
        found = db().scalars(query).all()
        if len(found) > 1:
            raise APIError(404, f"more than one {what} has an id starting with {row_id}: give more of it", **extra)
        row = found[0] if found else None
    if row is None or not may_see(row):
        raise APIError(404, f"no {what} with id {row_id}", **extra)
    return row
