"""Job callbacks: the allow-list, the signature, the outbox row and the sender, against a real local receiver."""
from __future__ import annotations

import ipaddress
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from graft.shared.config import LOOPBACK, Config
from graft.shared.db import get_engine, session_scope
from graft.shared.lifecycle import FAILED, RUNNING, SUCCEEDED, create_job, transition
from graft.shared.models import Job, WebhookDelivery, utcnow
from graft.shared.schema import upgrade
from graft.shared.serializers import serialize_job
from graft.shared.webhooks import (
    SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookRefused, next_attempt, resolve, sign, verify, vet_url,
)
from graft.worker.webhooks import deliver_due
from tests.helpers import Receiver

SECRET = "unit-secret"


def fake_dns(table: dict[str, list[str]]):  # noqa: ANN201 - a resolver
    """A resolver that answers from table, resolves IP literals as the real one does, and refuses other names."""
    def resolver(host: str, port: int) -> list[str]:
        if host in table:
            return table[host]
        try:
            ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            raise WebhookRefused(f"cannot resolve {host}") from None
        return resolve(host, port)  # a literal: no DNS query
    return resolver


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "https://127.9.9.9/x?a=1", "http://[::1]:9000/", "http://localhost/",
    "http://[::ffff:127.0.0.1]/",
])
def test_loopback_is_allowed_by_default(url: str) -> None:
    target = vet_url(url, LOOPBACK, fake_dns({"localhost": ["127.0.0.1", "::1"]}))
    assert target.addresses


@pytest.mark.parametrize(("url", "reason"), [
    ("http://10.0.0.1/x", "outside GRAFT_WEBHOOK_ALLOW"),
    ("http://169.254.169.254/latest/meta-data", "outside"),
    ("http://[::ffff:10.0.0.1]/", "outside"),
    ("http://[fe80::1]/", "outside"),
    ("http://example.com/", "cannot resolve"),
    ("http://sneaky.test/", "outside"),  # one of its addresses is internal
    ("ftp://127.0.0.1/x", "http or https"),
    ("file:///etc/passwd", "http or https"),
    ("http://user:pw@127.0.0.1/", "credentials"),
    ("http://127.0.0.1:99999/", "valid URL"),
    ("http:///nohost", "no host"),
    ("http://127.0.0.1/" + "a" * 3000, "longer"),
])
def test_refused_urls(url: str, reason: str) -> None:
    with pytest.raises(WebhookRefused, match=reason):
        vet_url(url, LOOPBACK, fake_dns({"sneaky.test": ["127.0.0.1", "10.1.2.3"]}))


def test_allow_list_of_cidrs_and_host_names() -> None:
    dns = fake_dns({"hooks.example.com": ["203.0.113.7"], "other.example.com": ["203.0.113.8"]})
    allow = ("10.1.0.0/16", "hooks.example.com")
    assert vet_url("http://10.1.2.3/", allow, dns).addresses == ("10.1.2.3",)
    assert vet_url("https://HOOKS.example.com/h", allow, dns).host_header == "hooks.example.com"
    for url in ("http://10.2.0.1/", "http://other.example.com/", "http://127.0.0.1/"):  # loopback only by default
        with pytest.raises(WebhookRefused):
            vet_url(url, allow, dns)


def test_signature_covers_timestamp_and_body() -> None:
    body, now = b'{"id": "j1"}', str(int(time.time()))
    signature = sign(SECRET, now, body)
    assert signature.startswith("sha256=") and verify(SECRET, now, body, signature)
    assert not verify("wrong", now, body, signature)
    assert not verify(SECRET, now, body + b" ", signature)
    assert not verify(SECRET, str(int(now) - 1), body, signature)  # the timestamp is signed
    old = str(int(time.time()) - 3600)
    assert not verify(SECRET, old, body, sign(SECRET, old, body))  # a replay of an old delivery


def test_backoff_doubles_and_stops_at_the_bound() -> None:
    start = utcnow()
    delays = [(next_attempt(start, n, start, 10, 10**6) - start).total_seconds() for n in (1, 2, 3, 12)]
    assert 8 <= delays[0] <= 12 and 16 <= delays[1] <= 24 and 32 <= delays[2] <= 48 and delays[3] <= 720
    assert next_attempt(start, 1, start + timedelta(seconds=55), 10, 60) is None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file for one test, or the session's private PostgreSQL schema."""
    url = f"sqlite:///{tmp_path / 'graft.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    upgrade(url)
    with session_scope(url) as session:  # the PostgreSQL schema outlives a test: nothing earlier is due
        session.execute(update(WebhookDelivery).values(next_at=None))
    yield url
    get_engine(url).dispose()


def _row(session: Session, job_id: str) -> WebhookDelivery:
    return session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()


def _finished_job(url: str, callback_url: str | None, target: str = SUCCEEDED) -> str:
    with session_scope(url) as session:
        job = create_job(session, "train", {"data_dir": "/d", "callback_url": callback_url})
        transition(session, job, RUNNING)
        session.commit()
        transition(session, job, target)
        return job.id


def test_finishing_a_job_with_a_callback_writes_one_outbox_row(db_url: str) -> None:
    with_hook, without = _finished_job(db_url, "http://127.0.0.1:1/h"), _finished_job(db_url, None)
    with session_scope(db_url) as session:
        rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id.in_([with_hook, without]))).all()
        assert [(r.job_id, r.url, r.attempts) for r in rows] == [(with_hook, "http://127.0.0.1:1/h", 0)]
        assert serialize_job(session.get(Job, without))["callback"] is None
        assert serialize_job(session.get(Job, with_hook))["callback"]["state"] == "pending"


def test_sender_retries_signs_and_never_follows_redirects(db_url: str) -> None:
    with Receiver([500, 302]) as receiver:
        job_id = _finished_job(db_url, receiver.url + "/hook?x=1", FAILED)
        config = Config(database_url=db_url, webhook_secret=SECRET, webhook_backoff_s=1)
        for _ in range(3):
            assert deliver_due(config) == 1
            with session_scope(db_url) as session:  # make the retry due now rather than wait for the backoff
                row = _row(session, job_id)
                row.next_at = utcnow() if row.next_at else None
        assert deliver_due(config) == 0
    assert len(receiver.received) == 3  # 500, then 302 (not followed), then 200
    for headers, body in receiver.received:
        assert verify(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert json.loads(body)["id"] == job_id and json.loads(body)["status"] == FAILED
    with session_scope(db_url) as session:
        callback = serialize_job(session.get(Job, job_id))["callback"]
    assert callback["state"] == "delivered" and callback["delivered_at"]
    assert [(a["attempt"], a["status"], a["error"]) for a in callback["attempts"]] == [
        (1, 500, "HTTP 500"), (2, 302, "HTTP 302"), (3, 200, None)]


def test_sender_gives_up_after_the_bound_and_rechecks_the_allow_list(db_url: str) -> None:
    job_id = _finished_job(db_url, "http://127.0.0.1:9/hook")
    config = Config(database_url=db_url, webhook_secret=SECRET, webhook_allow=("10.0.0.0/8",), webhook_max_s=0)
    assert deliver_due(config) == 1
    with session_scope(db_url) as session:
        row = _row(session, job_id)
        assert row.next_at is None and row.delivered_at is None and "outside GRAFT_WEBHOOK_ALLOW" in row.last_error
        assert serialize_job(session.get(Job, row.job_id))["callback"]["state"] == "failed"
