"""Users and their API tokens: create, list, change, authenticate (hashed tokens), revoke; quota usage per user.

A token is `gft_<id>_<secret>`: id (12 hex digits) is public and names the token in listings and revocations;
the secret is 32 random bytes. Only the SHA-256 of the whole token is stored. A fast, unsalted hash is enough
here (unlike passwords, which need a slow salted one): a 256-bit random secret cannot be guessed or brute-forced
from its hash, and a plain digest lets the database find the token by an indexed lookup.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from graft.shared.lifecycle import QUEUED, RUNNING
from graft.shared.models import UPLOAD, ApiToken, DatasetRecord, Job, TrainedModel, Upload, User, utcnow
from graft.shared.serializers import as_utc

PREFIX = "gft_"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TOKEN_ID = re.compile(r"^(?:gft_)?([0-9a-f]{12})(?:_[A-Za-z0-9_-]+)?$")
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per token: reads stay reads


class UserError(ValueError):
    """A user or token operation that cannot be done as asked (the message says why)."""


@dataclass(frozen=True)
class Usage:
    """What a user holds now: queued or running jobs, and stored bytes (uploaded datasets, uploads, models)."""

    active_jobs: int
    stored_bytes: int


def hash_token(token: str) -> str:
    """The stored form of a token (see the module's docstring for why SHA-256 suffices)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise UserError(f"invalid user name {name!r}: 1-64 letters, digits and . _ @ -, starting with a letter "
                        "or digit")
    return name


def get_user(session: Session, name: str) -> User:
    """The user called name, or UserError."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise UserError(f"no user called {name!r} (graft users list)")
    return user


def add_user(session: Session, name: str, admin: bool = False, max_jobs: int | None = None,
             max_storage_mb: int | None = None) -> User:
    """Insert a user (caller commits); UserError when the name is taken or invalid."""
    _check_name(name)
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise UserError(f"a user called {name!r} already exists")
    user = User(name=name, is_admin=admin, max_jobs=max_jobs, max_storage_mb=max_storage_mb)
    session.add(user)
    session.flush()
    return user


def create_token(session: Session, user: User) -> tuple[ApiToken, str]:
    """A new token for user (caller commits); returns the row and the token itself, which is never stored."""
    token_id = secrets.token_hex(6)
    token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    row = ApiToken(id=token_id, user_id=user.id, token_hash=hash_token(token))
    session.add(row)
    session.flush()
    return row, token


def public_id(token: ApiToken) -> str:
    """How a token is shown and named: its prefix and id, never its secret."""
    return f"{PREFIX}{token.id}"


def revoke(session: Session, given: str) -> ApiToken:
    """Revoke a token named by its id (`gft_<id>` or the 12 hex digits) or by the whole token (caller commits)."""
    match = TOKEN_ID.match(given.strip())
    row = session.get(ApiToken, match.group(1)) if match else None
    if row is None or (given.count("_") > 1 and row.token_hash != hash_token(given.strip())):
        raise UserError(f"no token {given!r}: give its id (gft_xxxxxxxxxxxx, see graft tokens list) or the token")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def authenticate(session: Session, token: str, now: datetime | None = None) -> User | None:
    """The user a live token belongs to, or None; records its use (at most once a minute, then commits)."""
    if not token.startswith(PREFIX):
        return None
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token),
                                                ApiToken.revoked_at.is_(None)))
    if row is None:
        return None
    user = session.get(User, row.user_id)
    now = now or utcnow()
    cutoff = now - TOUCH_EVERY
    if row.last_used_at is None or as_utc(row.last_used_at) < cutoff:
        # One conditional UPDATE: of several processes that see a stale time, one writes.
        session.execute(update(ApiToken).where(
            ApiToken.id == row.id, or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < cutoff)
        ).values(last_used_at=now).execution_options(synchronize_session=False))
        session.commit()
    return user


def has_live_tokens(session: Session) -> bool:
    """True when some user holds a token that is not revoked (a credential `graft api` may start with)."""
    return session.scalar(select(ApiToken.id).where(ApiToken.revoked_at.is_(None)).limit(1)) is not None


def list_users(session: Session) -> list[tuple[User, int]]:
    """Every user, by name, with its number of live tokens."""
    live = (select(ApiToken.user_id, func.count().label("n")).where(ApiToken.revoked_at.is_(None))
            .group_by(ApiToken.user_id).subquery())
    rows = session.execute(select(User, func.coalesce(live.c.n, 0)).outerjoin(live, live.c.user_id == User.id)
                           .order_by(User.name))
    return [(user, int(n)) for user, n in rows]


def list_tokens(session: Session, name: str | None = None) -> list[tuple[ApiToken, str]]:
    """Tokens (revoked ones too), oldest first, with their user's name; only name's when given."""
    query = select(ApiToken, User.name).join(User, User.id == ApiToken.user_id).order_by(ApiToken.created_at)
    if name is not None:
        query = query.where(User.id == get_user(session, name).id)
    return [(token, user_name) for token, user_name in session.execute(query)]


def usage(session: Session, user_id: str) -> Usage:
    """The user's queued and running jobs and stored bytes, in four aggregate queries."""
    jobs = session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == user_id,
                                                                      Job.status.in_((QUEUED, RUNNING))))
    stored = 0
    for query in (
        select(func.sum(DatasetRecord.size_bytes)).where(DatasetRecord.owner_id == user_id,
                                                         DatasetRecord.source == UPLOAD),
        select(func.sum(Upload.size_bytes)).where(Upload.owner_id == user_id),
        select(func.sum(TrainedModel.size_bytes)).where(TrainedModel.owner_id == user_id),
    ):
        stored += int(session.scalar(query) or 0)
    return Usage(int(jobs or 0), stored)


def limits(user: User, default_jobs: int, default_storage_mb: int) -> tuple[int, int]:
    """The user's (active jobs, storage MB) limits: its own overrides, else the defaults; 0 is unlimited."""
    return (default_jobs if user.max_jobs is None else user.max_jobs,
            default_storage_mb if user.max_storage_mb is None else user.max_storage_mb)
