"""Sends due job callbacks from the outbox (webhook_deliveries): one signed POST per attempt, retried with backoff.

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
from graft.shared.webhooks import Target, WebhookRefused, next_attempt, signed_headers, vet_url

log = logging.getLogger(__name__)

POLL_S = 1.0  # one indexed query a second per worker finds due rows
BATCH = 20
TIMEOUT = urllib3.Timeout(connect=5.0, read=10.0)  # a slow receiver costs one attempt, not the sender
CLAIM_S = 120  # longer than one attempt can take (TIMEOUT for each address tried)
LOG_KEEP = 50  # attempts kept on the row (and shown on the job); the oldest go first
CONNECT_ERRORS = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)


@dataclass(frozen=True)
class Attempt:
    """One claimed attempt: the row, its number, the body every attempt of it sends."""

    delivery_id: str
    number: int
    url: str
    body: bytes


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
        return Attempt(delivery_id, attempts + 1, delivery.url, json.dumps(payload).encode())


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


def _send(config: Config, attempt: Attempt) -> tuple[int | None, str | None]:
    """Make the attempt: (HTTP status or None, error or None when delivered)."""
    if not config.webhook_secret:
        return None, "GRAFT_WEBHOOK_SECRET is not set on this worker"
    try:
        target = vet_url(attempt.url, config.webhook_allow)  # again: the allow-list or the name may have changed
    except WebhookRefused as exc:
        return None, f"refused: {exc}"
    headers = signed_headers(config.webhook_secret, attempt.delivery_id, attempt.body)
    error = "no address"
    for address in target.addresses:
        try:
            status = _post(target, address, headers, attempt.body)
        except CONNECT_ERRORS as exc:
            error = f"{address}: {type(exc).__name__}"
            continue  # nothing was sent: the next address may answer
        except urllib3.exceptions.HTTPError as exc:
            return None, f"{address}: {type(exc).__name__}: {exc}"
        return status, None if 200 <= status < 300 else f"HTTP {status}"
    return None, error


def _record(config: Config, attempt: Attempt, status: int | None, error: str | None, ms: int) -> None:
    """Write the attempt's outcome and, when it failed, when to try next (None past GRAFT_WEBHOOK_MAX_SECONDS)."""
    with session_scope(config.database_url) as session:
        row = session.get(WebhookDelivery, attempt.delivery_id)
        if row is None or row.attempts != attempt.number:
            return  # our claim expired and another sender took the row: its record wins
        now = utcnow()
        entry = {"attempt": attempt.number, "at": iso(now), "status": status, "error": error, "ms": ms}
        values = {"log": [*(row.log or []), entry][-LOG_KEEP:], "last_status": status, "last_error": error}
        if error is None:
            values.update(delivered_at=now, next_at=None)
        else:
            values["next_at"] = next_attempt(as_utc(row.created_at), attempt.number, now, config.webhook_backoff_s,
                                             config.webhook_max_s)
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == row.id,
                                                      WebhookDelivery.attempts == attempt.number).values(**values))
    if error is None:
        log.info("webhook %s: delivered to %s (attempt %d)", attempt.delivery_id, attempt.url, attempt.number)
    else:
        later = "retrying" if values["next_at"] else "giving up"
        log.warning("webhook %s: attempt %d to %s failed (%s); %s", attempt.delivery_id, attempt.number, attempt.url,
                    error, later)


def deliver_due(config: Config) -> int:
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
        status, error = _send(config, attempt)
        _record(config, attempt, status, error, round((time.monotonic() - started) * 1000))
        done += 1
    return done


def deliver_forever(config: Config, stop: threading.Event) -> None:
    """Send due callbacks every POLL_S until stop is set."""
    while not stop.wait(POLL_S):
        try:
            deliver_due(config)
        except Exception:  # noqa: BLE001 - the sender must outlive database hiccups
            log.exception("webhook delivery round failed")
