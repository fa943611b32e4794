"""What a request handler needs from its app: the request's database session, the Graft config, the Celery app."""
from __future__ import annotations

from celery import Celery
from flask import current_app, g
from sqlalchemy.orm import Session

from graft.shared.config import Config


def db() -> Session:
    """The request's session (closed at teardown)."""
    if "db" not in g:
        g.db = current_app.extensions["graft_sessions"]()
    return g.db


def config() -> Config:
    """The app's Graft config."""
    return current_app.config["GRAFT"]


def celery() -> Celery:
    """The Celery app used to enqueue tasks."""
    return current_app.extensions["graft_celery"]
