"""Each user's webhook secrets: made by `graft webhook-secrets create NAME`, shown once, derived again to sign.

A user's callbacks are signed with that user's secrets only, so one user's receiver cannot forge another's. The
server must still hold the key to sign (HMAC needs it), yet a copy of the database must not give it away: a row
keeps a public id (`whk_<12 hex>`, sent in X-Graft-Key-Id) and 32 random bytes (the seed); the secret is
HMAC-SHA256(GRAFT_WEBHOOK_KEY, id + seed), recomputed at each signing and never stored. The database alone gives
no secret, and neither does the server key alone (the seeds are random). The standard library's HMAC is a PRF, so
this needs no cipher and no dependency (`cryptography` is not one of Graft's).

A row remembers which server key it was derived with (a fingerprint): GRAFT_WEBHOOK_KEY may list a new key first
and old ones after it, and a secret made with an old key keeps signing until it is revoked.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from graft.shared.models import User, WebhookSecret, utcnow
from graft.shared.users import UserError, get_user

ID_PREFIX = "whk_"
SECRET_PREFIX = "whsec_"
MAX_LIVE = 2  # two during a rotation (the new one signs first, the old one too until it is revoked); no more
SECRET_ID = re.compile(r"^(?:whk_)?([0-9a-f]{12})$")


def fingerprint(server_key: str) -> str:
    """The public name of a server key (16 hex digits): which one a row was derived with."""
    return hmac.new(server_key.encode(), b"graft webhook key fingerprint", hashlib.sha256).hexdigest()[:16]


def derive(server_key: str, row: WebhookSecret) -> str:
    """The secret of row: HMAC-SHA256 of its id and seed under the server key, as printable text."""
    message = b"graft webhook secret\0" + row.id.encode() + b"\0" + bytes.fromhex(row.seed)
    digest = hmac.new(server_key.encode(), message, hashlib.sha256).digest()
    return SECRET_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def public_id(row: WebhookSecret) -> str:
    """How a secret is named: in X-Graft-Key-Id, `graft webhook-secrets list` and `revoke`."""
    return f"{ID_PREFIX}{row.id}"


def _live(user_id: str):  # noqa: ANN202 - a Select
    return (select(WebhookSecret).where(WebhookSecret.user_id == user_id, WebhookSecret.revoked_at.is_(None))
            .order_by(WebhookSecret.created_at.desc(), WebhookSecret.id))


def create_secret(session: Session, user: User, server_keys: Sequence[str]) -> tuple[WebhookSecret, str]:
    """A new secret for user, derived with the first server key (caller commits); returns the row and the secret."""
    if not server_keys:
        raise UserError("GRAFT_WEBHOOK_KEY is not set: webhook secrets are derived from it")
    live = session.scalar(select(func.count()).select_from(_live(user.id).subquery()))
    if live >= MAX_LIVE:
        raise UserError(f"{user.name} has {live} live webhook secrets: revoke one first (graft webhook-secrets list)")
    row = WebhookSecret(id=secrets.token_hex(6), user_id=user.id, seed=secrets.token_hex(32),
                        server_key=fingerprint(server_keys[0]), created_at=utcnow())
    session.add(row)
    session.flush()
    return row, derive(server_keys[0], row)


def revoke_secret(session: Session, given: str) -> WebhookSecret:
    """Revoke a secret named by its id (`whk_<id>` or the 12 hex digits); caller commits."""
    match = SECRET_ID.match(given.strip())
    row = session.get(WebhookSecret, match.group(1)) if match else None
    if row is None:
        raise UserError(f"no webhook secret {given!r}: give its id (whk_xxxxxxxxxxxx, see graft webhook-secrets list)")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def list_secrets(session: Session, name: str | None = None) -> list[tuple[WebhookSecret, str]]:
    """Secrets (revoked ones too), oldest first, with their user's name; only name's when given."""
    query = (select(WebhookSecret, User.name).join(User, User.id == WebhookSecret.user_id)
             .order_by(WebhookSecret.created_at))
    if name is not None:
        query = query.where(User.id == get_user(session, name).id)
    return [(row, user_name) for row, user_name in session.execute(query)]


def has_live_secret(session: Session, user_id: str) -> bool:
    """True when the user holds a secret that is not revoked."""
    return session.scalar(_live(user_id).limit(1)) is not None


def signing_secrets(session: Session, user_id: str, server_keys: Sequence[str]) -> list[tuple[str, str]]:
    """(public id, secret) of each live secret of the user, newest first, that a configured server key derives."""
    keys = {fingerprint(key): key for key in server_keys}
    return [(public_id(row), derive(keys[row.server_key], row)) for row in session.scalars(_live(user_id))
            if row.server_key in keys]
