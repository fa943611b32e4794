"""Job callbacks (webhooks): which URLs are allowed, how a body is signed, the outbox row and the retry schedule.

Standard library and the tables only: the API vets a URL with it at submission, lifecycle.transition writes the
outbox row with a job's final status, and graft.worker.webhooks sends (re-vetting the URL at send time).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Sequence
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from graft.shared.models import Job, WebhookDelivery

SIGNATURE_HEADER = "X-Graft-Signature"  # "sha256=" + hex HMAC-SHA256 of f"{timestamp}.".encode() + raw body
TIMESTAMP_HEADER = "X-Graft-Timestamp"  # unix seconds when the attempt was signed; part of the signed message
DELIVERY_HEADER = "X-Graft-Delivery"  # the same id on every attempt of one job's callback: receivers dedupe by it
MAX_URL_LENGTH = 2048
MAX_BACKOFF_S = 600

Resolver = Callable[[str, int], list[str]]


class WebhookRefused(ValueError):
    """A callback URL that Graft will not send to."""


@dataclass(frozen=True)
class Target:
    """A vetted callback URL: the name it gives, the allowed addresses it resolved to, the path to POST."""

    scheme: str
    host: str  # as in the URL, lower-cased and without IPv6 brackets: the Host header and TLS server name
    port: int
    path: str  # path and query
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        """The Host header: brackets around an IPv6 literal, the port when it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.scheme == "https" else 80) else f"{host}:{self.port}"


def resolve(host: str, port: int) -> list[str]:
    """Every address host resolves to (an IP literal resolves to itself, with no DNS query)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookRefused(f"cannot resolve {host}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(text.split("%")[0])  # drop an IPv6 scope id
    # ::ffff:10.0.0.1 reaches 10.0.0.1: judge it as the IPv4 address it is.
    return (addr.ipv4_mapped or addr) if isinstance(addr, ipaddress.IPv6Address) else addr


def vet_url(url: str, allow: Sequence[str], resolver: Resolver = resolve) -> Target:
    """Check url against the allow-list (CIDRs of every resolved address, or exact host names); WebhookRefused if not."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRefused(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused("must be an http or https URL")
    if not parts.hostname:
        raise WebhookRefused("has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("must not hold credentials (the signature tells the receiver it is Graft)")
    host = parts.hostname
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = resolver(host, port)
    networks = []
    for entry in allow:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if entry.lower() == host.rstrip("."):
                networks = None  # a host name the operator allowed: whatever it resolves to
                break
    if networks is not None:
        outside = [a for a in addresses if not any(_address(a) in net for net in networks)]
        if outside or not addresses:
            raise WebhookRefused(f"{host} resolves to {outside[0] if outside else 'nothing'}, "
                                 "outside GRAFT_WEBHOOK_ALLOW")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, tuple(addresses))


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: "sha256=" + hex HMAC-SHA256 over the timestamp, a dot and the raw body."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, tolerance_s: float = 300) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent (a replay is refused)."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def signed_headers(secret: str, delivery_id: str, body: bytes) -> dict[str, str]:
    """The headers of one attempt, signed now."""
    timestamp = str(int(time.time()))
    return {"Content-Type": "application/json", "User-Agent": "graft-webhook/1", DELIVERY_HEADER: delivery_id,
            TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(secret, timestamp, body)}


def record_delivery(session: Session, job: Job, now: datetime) -> None:
    """Add the job's callback to the outbox, due now, in the caller's transaction (a no-op without callback_url)."""
    url = (job.params or {}).get("callback_url")
    if url:
        session.add(WebhookDelivery(job_id=job.id, url=url, next_at=now, created_at=now))


def next_attempt(created_at: datetime, attempts: int, now: datetime, backoff_s: float, max_s: float) -> datetime | None:
    """When to try again after the attempts so far failed: doubling backoff with jitter; None past the bound."""
    delay = min(backoff_s * 2 ** min(attempts - 1, 20), max(MAX_BACKOFF_S, backoff_s))
    at = now + timedelta(seconds=delay * random.uniform(0.8, 1.2))  # jitter: many failed hooks do not retry in step
    return at if at <= created_at + timedelta(seconds=max_s) else None
