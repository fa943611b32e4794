"""Sends due job callbacks from the outbox (webhook_deliveries): one signed POST per attempt, retried with backoff.

Each attempt resolves the URL's host here, off any request thread, judges every address (graft.shared.webhooks:
internal addresses and the service's own Redis and database only when GRAFT_WEBHOOK_ALLOW names them), and
connects to the address it judged, never to the name again. It is signed with the job owner's own webhook secrets
(graft.shared.webhook_secrets). What went wrong goes to this worker's log and the row's last_error, which only the
operator reads; the job's owner sees the result's class alone ("2xx", "no answer").

It runs as a thread in every worker's main process, beside the lease sweeper, not as a Celery task: it needs
HTTP only (no torch), and a task would wait behind a long training job on a busy pool. Each attempt is claimed
by a compare-and-set on the row's attempts, so two workers never make the same attempt; a sender killed mid-POST
leaves its claim to expire (CLAIM_S) and another tries again. Delivery is therefore at least once.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import urllib3
from sqlalchemy import select, update

from graft.shared.config import Config
from graft.shared.db import session_scope
from graft.shared.models import Job, WebhookDelivery, utcnow
from graft.shared.serializers import as_utc, iso, model_ids_for, serialize_job
from graft.shared.webhook_secrets import signing_secrets
from graft.shared.webhooks import (
    NO_ANSWER, NOT_SENT, Address, Policy, Resolver, Target, WebhookRefused, next_attempt, own_addresses, resolve,
    result_of, service_hosts, signed_headers, vet_url,
)

log = logging.getLogger(__name__)

POLL_S = 1.0  # one indexed query a second per worker finds due rows
BATCH = 20
TIMEOUT = urllib3.Timeout(connect=5.0, read=10.0)  # a slow receiver costs one attempt, not the sender
CLAIM_S = 120  # longer than one attempt can take (TIMEOUT for each address tried)
LOG_KEEP = 50  # attempts kept on the row (and shown on the job); the oldest go first
CONNECT_ERRORS = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)
OWN_ADDRESSES_TTL_S = 60.0  # Redis's and the database's addresses are looked up again this often


@dataclass(frozen=True)
class Attempt:
    """One claimed attempt: the row, its number, the body every attempt of it sends."""

    delivery_id: str
    number: int
    url: str
    body: bytes
    secrets: tuple[tuple[str, str], ...]  # (key id, secret) of the job owner's live webhook secrets, newest first


@dataclass(frozen=True)
class Outcome:
    """What an attempt came to: the HTTP status (None without one), what the owner sees, and what went wrong."""

    status: int | None
    result: str  # one of graft.shared.webhooks.RESULTS
    error: str | None  # for the operator only (log, last_error); None when delivered


_own: dict[tuple[tuple[str, ...], Resolver], tuple[float, frozenset[Address]]] = {}


def own(config: Config, resolver: Resolver = resolve) -> frozenset[Address]:
    """The addresses of the service's Redis and database, looked up at most every OWN_ADDRESSES_TTL_S."""
    key = (tuple(service_hosts(config.database_url, config.redis_url)), resolver)
    found = _own.get(key)
    if found is None or time.monotonic() - found[0] > OWN_ADDRESSES_TTL_S:
        found = _own[key] = (time.monotonic(), own_addresses(key[0], resolver))
    return found[1]


def _claim(config: Config, delivery_id: str, attempts: int) -> Attempt | None:
    """Take the row's next attempt (compare-and-set on attempts); None when another sender took it first."""
    with session_scope(config.database_url) as session:
        now = utcnow()
        row = WebhookDelivery
        taken = session.execute(
            update(row).where(row.id == delivery_id, row.attempts == attempts, row.delivered_at.is_(None),
                              row.next_at <= now)
            .values(attempts=attempts + 1, next_at=now + timedelta(seconds=CLAIM_S))
        ).rowcount == 1
        if not taken:
            return None
        delivery = session.get(row, delivery_id)
        job = session.get(Job, delivery.job_id)
        payload = serialize_job(job, model_ids_for(session, [job.id]).get(job.id))
        payload.pop("callback", None)  # the delivery log is not part of the body: every attempt sends the same
        keys = signing_secrets(session, job.owner_id, config.webhook_keys) if job.owner_id else []
        return Attempt(delivery_id, attempts + 1, delivery.url, json.dumps(payload).encode(), tuple(keys))


def _post(target: Target, address: str, headers: dict[str, str], body: bytes) -> int:
    """POST to one vetted address, naming the URL's host; never follows a redirect. Returns the HTTP status."""
    # Connect to the address we checked, not the name: a second lookup could answer differently (DNS rebinding).
    common = {"timeout": TIMEOUT, "retries": False, "maxsize": 1}
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(address, target.port, server_hostname=target.host,
                                           assert_hostname=target.host, cert_reqs="CERT_REQUIRED", **common)
    else:
        pool = urllib3.HTTPConnectionPool(address, target.port, **common)
    with pool:
        response = pool.urlopen("POST", target.path, body=body, headers={**headers, "Host": target.host_header},
                                redirect=False, assert_same_host=False, preload_content=False)
        response.read(4096, decode_content=False)  # the answer's start is enough; a huge one is not our problem
        response.release_conn()
        return response.status


def _send(config: Config, attempt: Attempt, resolver: Resolver = resolve) -> Outcome:
    """Make the attempt."""
    if not attempt.secrets:
        return Outcome(None, NOT_SENT, "the job's owner has no webhook secret this worker's GRAFT_WEBHOOK_KEY derives")
    try:
        # Resolved here, at each attempt: the allow-list or the name may have changed since the last one.
        target = vet_url(attempt.url, Policy.of(config.webhook_allow, own(config, resolver)), resolver)
    except WebhookRefused as exc:
        return Outcome(None, NO_ANSWER, f"refused: {exc}")  # the owner cannot tell it from a silent receiver
    headers = signed_headers(attempt.secrets, attempt.delivery_id, attempt.body)
    error = "no address"
    for address in target.addresses:
        try:
            status = _post(target, address, headers, attempt.body)
        except CONNECT_ERRORS as exc:
            error = f"{address}: {type(exc).__name__}"
            continue  # nothing was sent: the next address may answer
        except urllib3.exceptions.HTTPError as exc:
            return Outcome(None, NO_ANSWER, f"{address}: {type(exc).__name__}: {exc}")
        return Outcome(status, result_of(status), None if 200 <= status < 300 else f"HTTP {status}")
    return Outcome(None, NO_ANSWER, error)


def _record(config: Config, attempt: Attempt, outcome: Outcome, ms: int) -> None:
    """Write the attempt's outcome and, when it failed, when to try next (None past GRAFT_WEBHOOK_MAX_SECONDS)."""
    with session_scope(config.database_url) as session:
        row = session.get(WebhookDelivery, attempt.delivery_id)
        if row is None or row.attempts != attempt.number:
            return  # our claim expired and another sender took the row: its record wins
        now = utcnow()
        # The log is what the job shows its owner: no status beyond its class, no error text, no timing.
        entry = {"attempt": attempt.number, "at": iso(now), "result": outcome.result}
        values = {"log": [*(row.log or []), entry][-LOG_KEEP:], "last_status": outcome.status,
                  "last_error": outcome.error}
        if outcome.error is None:
            values.update(delivered_at=now, next_at=None)
        else:
            values["next_at"] = next_attempt(as_utc(row.created_at), attempt.number, now, config.webhook_backoff_s,
                                             config.webhook_max_s)
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == row.id,
                                                      WebhookDelivery.attempts == attempt.number).values(**values))
    if outcome.error is None:
        log.info("webhook %s: delivered to %s (attempt %d, %d ms)", attempt.delivery_id, attempt.url, attempt.number,
                 ms)
    else:
        later = "retrying" if values["next_at"] else "giving up"
        log.warning("webhook %s: attempt %d to %s failed (%s, %d ms); %s", attempt.delivery_id, attempt.number,
                    attempt.url, outcome.error, ms, later)


def deliver_due(config: Config, resolver: Resolver = resolve) -> int:
    """Make one attempt at each due callback (up to BATCH); returns how many were attempted."""
    with session_scope(config.database_url) as session:
        due = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.attempts)
            .where(WebhookDelivery.delivered_at.is_(None), WebhookDelivery.next_at <= utcnow())
            .order_by(WebhookDelivery.next_at).limit(BATCH)
        ).all()
    done = 0
    for delivery_id, attempts in due:
        attempt = _claim(config, delivery_id, attempts)
        if attempt is None:
            continue
        started = time.monotonic()
        outcome = _send(config, attempt, resolver)
        _record(config, attempt, outcome, round((time.monotonic() - started) * 1000))
        done += 1
    return done


def deliver_forever(config: Config, stop: threading.Event) -> None:
    """Send due callbacks every POLL_S until stop is set."""
    while not stop.wait(POLL_S):
        try:
            deliver_due(config)
        except Exception:  # noqa: BLE001 - the sender must outlive database hiccups
            log.exception("webhook delivery round failed")
