"""Job callbacks: each user's secrets, the outbox row and the sender, against a real local receiver and database."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from graft.shared.config import Config
from graft.shared.db import get_engine, session_scope
from graft.shared.lifecycle import FAILED, RUNNING, SUCCEEDED, create_job, transition
from graft.shared.models import Job, User, WebhookDelivery, WebhookSecret, utcnow
from graft.shared.schema import upgrade
from graft.shared.serializers import serialize_job
from graft.shared.users import UserError, add_user
from graft.shared.webhook_secrets import (
    create_secret, derive, fingerprint, has_live_secret, revoke_secret, signing_secrets,
)
from graft.shared.webhooks import KEY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, next_attempt, resolve, verify
from graft.worker.webhooks import deliver_due
from tests.helpers import Receiver

KEY = "unit-server-key-0123456789abcdefghijklmnop"
OLD_KEY = "unit-old-server-key-0123456789abcdefghijkl"
RECEIVER_HOST = "127.0.0.2"  # a loopback address of its own, so that the allow-list can name it alone
ALLOW = (f"{RECEIVER_HOST}/32",)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file for one test, or the session's private PostgreSQL schema."""
    url = f"sqlite:///{tmp_path / 'graft.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    upgrade(url)
    with session_scope(url) as session:  # the PostgreSQL schema outlives a test: nothing earlier is due
        session.execute(update(WebhookDelivery).values(next_at=None))
    yield url
    get_engine(url).dispose()


def _user(url: str, keys: tuple[str, ...] = (KEY,)) -> tuple[str, str, str]:
    """A new user with one webhook secret: (user id, key id, secret)."""
    with session_scope(url) as session:
        user = add_user(session, f"u{utcnow().timestamp():.6f}".replace(".", ""))
        row, secret = create_secret(session, user, keys)
        return user.id, f"whk_{row.id}", secret


def _row(session: Session, job_id: str) -> WebhookDelivery:
    return session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()


def _finished_job(url: str, callback_url: str | None, owner: str | None, target: str = SUCCEEDED) -> str:
    with session_scope(url) as session:
        job = create_job(session, "train", {"data_dir": "/d", "callback_url": callback_url}, owner)
        transition(session, job, RUNNING)
        session.commit()
        transition(session, job, target)
        return job.id


def _deliver_all(config: Config, job_ids: list[str], rounds: int, **kwargs: object) -> None:
    """Run the sender rounds times, making each failed attempt's retry due at once instead of after the backoff."""
    for _ in range(rounds):
        deliver_due(config, **kwargs)
        with session_scope(config.database_url) as session:
            due = WebhookDelivery.job_id.in_(job_ids) & WebhookDelivery.next_at.is_not(None)
            session.execute(update(WebhookDelivery).where(due).values(next_at=utcnow()))


def _callback(url: str, job_id: str) -> dict:
    with session_scope(url) as session:
        return serialize_job(session.get(Job, job_id))["callback"]


def test_finishing_a_job_with_a_callback_writes_one_outbox_row(db_url: str) -> None:
    with_hook, without = _finished_job(db_url, "http://8.8.8.8/h", None), _finished_job(db_url, None, None)
    with session_scope(db_url) as session:
        rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id.in_([with_hook, without]))).all()
        assert [(r.job_id, r.url, r.attempts) for r in rows] == [(with_hook, "http://8.8.8.8/h", 0)]
        assert serialize_job(session.get(Job, without))["callback"] is None
        assert serialize_job(session.get(Job, with_hook))["callback"]["state"] == "pending"


def test_each_user_signs_with_its_own_secret(db_url: str) -> None:
    alice, bob = _user(db_url), _user(db_url)
    with Receiver([500, 302], host=RECEIVER_HOST) as a_receiver, Receiver(host=RECEIVER_HOST) as b_receiver:
        a_job = _finished_job(db_url, a_receiver.url + "/hook?x=1", alice[0], FAILED)
        b_job = _finished_job(db_url, b_receiver.url + "/hook", bob[0])
        config = Config(database_url=db_url, webhook_keys=(KEY,), webhook_allow=ALLOW, webhook_backoff_s=1)
        _deliver_all(config, [a_job, b_job], 3)
        assert deliver_due(config) == 0
    assert len(a_receiver.received) == 3 and len(b_receiver.received) == 1  # 500, 302 (not followed), 200
    for receiver, (_, key_id, secret), other, job_id in ((a_receiver, alice, bob[2], a_job),
                                                         (b_receiver, bob, alice[2], b_job)):
        for headers, body in receiver.received:
            assert headers[KEY_ID_HEADER] == key_id and json.loads(body)["id"] == job_id
            assert verify(secret, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
            assert not verify(other, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])  # the other's
    callback = _callback(db_url, a_job)
    assert callback["state"] == "delivered" and callback["delivered_at"]
    assert [(a["attempt"], a["result"]) for a in callback["attempts"]] == [(1, "5xx"), (2, "3xx"), (3, "2xx")]
    assert all(set(a) == {"attempt", "at", "result"} for a in callback["attempts"])


def test_rotation_signs_with_both_until_the_old_one_is_revoked(db_url: str) -> None:
    user_id, old_id, old_secret = _user(db_url)
    with session_scope(db_url) as session:
        row, new_secret = create_secret(session, session.get(User, user_id), (KEY,))
        new_id = f"whk_{row.id}"
        with pytest.raises(UserError, match="revoke one first"):  # two live at most
            create_secret(session, session.get(User, user_id), (KEY,))
    config = Config(database_url=db_url, webhook_keys=(KEY,), webhook_allow=ALLOW)
    with Receiver(host=RECEIVER_HOST) as receiver:
        first = _finished_job(db_url, receiver.url, user_id)
        deliver_due(config)
        with session_scope(db_url) as session:
            revoke_secret(session, old_id)
        second = _finished_job(db_url, receiver.url, user_id)
        deliver_due(config)
    (during, body1), (after, body2) = receiver.received
    assert json.loads(body1)["id"] == first and json.loads(body2)["id"] == second
    assert during[KEY_ID_HEADER] == f"{new_id}, {old_id}" and after[KEY_ID_HEADER] == new_id
    assert verify(new_secret, during[TIMESTAMP_HEADER], body1, during[SIGNATURE_HEADER].split(", ")[0])  # newest
    assert verify(old_secret, during[TIMESTAMP_HEADER], body1, during[SIGNATURE_HEADER])  # still valid
    assert verify(new_secret, after[TIMESTAMP_HEADER], body2, after[SIGNATURE_HEADER])
    assert not verify(old_secret, after[TIMESTAMP_HEADER], body2, after[SIGNATURE_HEADER])  # revoked


def test_secrets_are_derived_not_stored_and_follow_their_server_key(db_url: str) -> None:
    user_id, key_id, secret = _user(db_url, (OLD_KEY,))
    with session_scope(db_url) as session:
        row = session.get(WebhookSecret, key_id[4:])
        stored = " ".join(str(v) for v in (row.id, row.seed, row.server_key))
        assert secret[6:] not in stored and row.server_key == fingerprint(OLD_KEY) and derive(OLD_KEY, row) == secret
        assert derive(KEY, row) != secret
        # A new server key listed first keeps the old one for the secrets made with it, until they are replaced.
        assert signing_secrets(session, user_id, (KEY, OLD_KEY)) == [(key_id, secret)]
        assert signing_secrets(session, user_id, (KEY,)) == [] and has_live_secret(session, user_id)


def test_nothing_is_sent_without_the_owners_secret(db_url: str) -> None:
    user_id, key_id, _ = _user(db_url)
    with session_scope(db_url) as session:
        revoke_secret(session, key_id)
    with Receiver(host=RECEIVER_HOST) as receiver:
        jobs = [_finished_job(db_url, receiver.url, user_id), _finished_job(db_url, receiver.url, None)]  # ownerless
        deliver_due(Config(database_url=db_url, webhook_keys=(KEY,), webhook_allow=ALLOW, webhook_max_s=0))
    assert receiver.received == []
    for job_id in jobs:
        assert [a["result"] for a in _callback(db_url, job_id)["attempts"]] == ["not sent"]


def test_the_sender_connects_to_the_address_it_vetted(db_url: str) -> None:
    """A name is resolved once per attempt and the POST goes to that address: a second answer (DNS rebinding)
    is never asked for. rebind.test resolves nowhere but in this resolver."""
    asked: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return [RECEIVER_HOST] if host == "rebind.test" else resolve(host, port)

    user_id, _, secret = _user(db_url)
    with Receiver(host=RECEIVER_HOST) as receiver:
        job_id = _finished_job(db_url, f"http://rebind.test:{receiver.port}/h", user_id)
        deliver_due(Config(database_url=db_url, webhook_keys=(KEY,), webhook_allow=ALLOW), resolver)
    (headers, body), = receiver.received
    assert headers["Host"] == f"rebind.test:{receiver.port}" and asked.count("rebind.test") == 1
    assert verify(secret, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert _callback(db_url, job_id)["state"] == "delivered"


@pytest.mark.parametrize("target", ["http://localhost:{port}/h", "http://127.0.0.1:{port}/h", "http://127.0.0.2:1/h"])
def test_a_refused_or_dead_target_shows_no_answer_and_no_detail(db_url: str, target: str) -> None:
    user_id, _, _ = _user(db_url)
    with Receiver() as loopback:  # on 127.0.0.1, which the allow-list does not name
        job_id = _finished_job(db_url, target.format(port=loopback.port), user_id)
        config = Config(database_url=db_url, webhook_keys=(KEY,), webhook_allow=ALLOW, webhook_max_s=0)
        assert deliver_due(config) == 1
    assert loopback.received == []
    callback = _callback(db_url, job_id)
    assert callback["state"] == "failed" and [a["result"] for a in callback["attempts"]] == ["no answer"]
    with session_scope(db_url) as session:
        assert _row(session, job_id).last_error  # the operator's detail stays in the row (and the worker's log)
    shown = json.dumps(callback)
    for clue in ("Error", "refused", "127.0.0.1", "::1", "ms", "status"):
        assert clue not in shown.replace(target.format(port=loopback.port), "")


def test_backoff_doubles_and_stops_at_the_bound() -> None:
    start = utcnow()
    delays = [(next_attempt(start, n, start, 10, 10**6) - start).total_seconds() for n in (1, 2, 3, 12)]
    assert 8 <= delays[0] <= 12 and 16 <= delays[1] <= 24 and 32 <= delays[2] <= 48 and delays[3] <= 720
    assert next_attempt(start, 1, start + timedelta(seconds=55), 10, 60) is None

