"""Job callbacks (webhooks): where a callback may go, how a body is signed, the outbox row, the retry schedule, and
what its owner is shown of each attempt.

Standard library and the tables only. The API checks a URL at submission without any DNS query (`check_submitted`:
syntax, scheme, and the address of an IP literal); graft.worker.webhooks resolves the name when it sends
(`vet_url`), judges every address, and connects to the one it judged.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import re
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from graft.shared.models import Job, WebhookDelivery

SIGNATURE_HEADER = "X-Graft-Signature"  # "sha256=<hex>" per live secret of the owner, newest first, ", "-joined
KEY_ID_HEADER = "X-Graft-Key-Id"  # the ids of those secrets, in the same order: the first signed with the newest
TIMESTAMP_HEADER = "X-Graft-Timestamp"  # unix seconds when the attempt was signed; part of the signed message
DELIVERY_HEADER = "X-Graft-Delivery"  # the same id on every attempt of one job's callback: receivers dedupe by it
MAX_URL_LENGTH = 2048
MAX_BACKOFF_S = 600
# What the job's owner sees of an attempt: never an exception's text, an address or a timing (a port scanner's clues).
NO_ANSWER = "no answer"  # refused here (an address callbacks may not reach), unresolvable, unreachable or too slow
NOT_SENT = "not sent"  # the owner has no webhook secret the server can sign with
RESULTS = ("2xx", "3xx", "4xx", "5xx", NO_ANSWER, NOT_SENT)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$")


class WebhookRefused(ValueError):
    """A callback URL that Graft will not send to."""


@dataclass(frozen=True)
class Target:
    """A vetted callback URL: the name it gives, the admitted addresses it resolved to, the path to POST."""

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


def address(text: str) -> Address:
    """An address as a connection reaches it: ::ffff:10.0.0.1 is 10.0.0.1 (an IPv6 scope id is dropped)."""
    addr = ipaddress.ip_address(text.split("%")[0])
    return (addr.ipv4_mapped or addr) if isinstance(addr, ipaddress.IPv6Address) else addr


def _embedded(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 one carries to a gateway: 6to4, Teredo, NAT64."""
    found = [addr.sixtofour] if addr.sixtofour else []
    found += list(addr.teredo or ())
    if addr in _NAT64:
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return found


def internal(addr: Address) -> bool:
    """True for an address that is not a public host's: loopback, private, link-local, CGNAT, ULA, multicast,
    unspecified, reserved, documentation, or an IPv6 address that carries such an IPv4 one."""
    if (not addr.is_global or addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
            or addr.is_reserved or addr.is_unspecified):
        return True
    return isinstance(addr, ipaddress.IPv6Address) and (addr.is_site_local or any(map(internal, _embedded(addr))))


@dataclass(frozen=True)
class Policy:
    """Where callbacks may go: any public address but the service's own; an internal or own one only when
    GRAFT_WEBHOOK_ALLOW names it (a CIDR that holds it, the exact address for the service's own, or the host name)."""

    networks: tuple[Network, ...] = ()
    names: frozenset[str] = frozenset()
    own: frozenset[Address] = field(default_factory=frozenset)  # Redis's and the database's addresses

    @classmethod
    def of(cls, allow: Sequence[str], own: Iterable[Address] = ()) -> "Policy":
        """The policy of a GRAFT_WEBHOOK_ALLOW list (as Config parsed it) and the service's own addresses."""
        networks, names = [], set()
        for entry in allow:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(names), frozenset(own))

    def admits(self, host: str, addr: Address) -> bool:
        """True when a callback naming host may connect to addr."""
        if host in self.names:
            return True  # the operator named this host: whatever it resolves to
        if addr in self.own:  # Redis or the database: only an entry for this very address opens it
            return any(net.num_addresses == 1 and addr in net for net in self.networks)
        return not internal(addr) or any(addr in net for net in self.networks)


@dataclass(frozen=True)
class CallbackURL:
    """A callback URL's parts, checked for syntax."""

    scheme: str
    host: str
    port: int
    path: str


def parse_url(url: str) -> CallbackURL:
    """The URL's parts: http or https, a host, no credentials, a valid port; WebhookRefused otherwise."""
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
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return CallbackURL(parts.scheme, parts.hostname.rstrip("."), port or (443 if parts.scheme == "https" else 80),
                       path)


def literal(host: str) -> Address | None:
    """The address host spells (127.1, 2130706433, 0x7f.1 and ::1 included, as the resolver reads them), or None
    for a name: no DNS query."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None
    return address(str(infos[0][4][0])) if infos else None


def _is_name(host: str) -> bool:
    """True for a DNS name (IDNA allowed) whose last label is not all digits: one that could resolve."""
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return len(ascii_host) <= 253 and bool(_NAME.match(ascii_host)) and not ascii_host.rsplit(".", 1)[-1].isdigit()


def check_submitted(url: str, policy: Policy) -> None:
    """What the API checks when a job is submitted, cheaply and without DNS; WebhookRefused if refused."""
    parts = parse_url(url)
    addr = literal(parts.host)
    if addr is None and not _is_name(parts.host):
        raise WebhookRefused(f"{parts.host!r} is neither an IP address nor a host name")
    if addr is not None and not policy.admits(parts.host, addr):
        raise WebhookRefused(f"{parts.host} is an address callbacks may not reach (internal, or the service's own) "
                             "and GRAFT_WEBHOOK_ALLOW does not name it")


def resolve(host: str, port: int) -> list[str]:
    """Every address host resolves to (an IP literal resolves to itself, with no DNS query)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookRefused(f"cannot resolve {host}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def vet_url(url: str, policy: Policy, resolver: Resolver = resolve) -> Target:
    """Resolve url's host and admit it only when the policy admits every address; WebhookRefused if not."""
    parts = parse_url(url)
    addresses = resolver(parts.host, parts.port)
    refused = [a for a in addresses if not policy.admits(parts.host, address(a))]
    if refused or not addresses:
        raise WebhookRefused(f"{parts.host} resolves to {refused[0] if refused else 'nothing'}, which callbacks "
                             "may not reach (GRAFT_WEBHOOK_ALLOW)")
    return Target(parts.scheme, parts.host, parts.port, parts.path, tuple(addresses))


def service_hosts(database_url: str, redis_url: str) -> list[str]:
    """The hosts the service's own database and Redis URLs name (none for SQLite or a Unix socket)."""
    hosts = []
    try:
        hosts.append(make_url(database_url).host)
    except ArgumentError:
        pass
    try:
        hosts.append(urlsplit(redis_url).hostname)
    except ValueError:
        pass
    return [h.strip("[]").rstrip(".").lower() for h in hosts if h]


def own_addresses(hosts: Iterable[str], resolver: Resolver | None = resolve) -> frozenset[Address]:
    """The addresses of hosts: literals as written, names through resolver (None: names are skipped, no DNS)."""
    found: set[Address] = set()
    for host in hosts:
        addr = literal(host)
        if addr is not None:
            found.add(addr)
        elif resolver is not None:
            try:
                found.update(address(a) for a in resolver(host, 0))
            except WebhookRefused:
                pass  # not resolvable here: nothing to protect under that name
    return frozenset(found)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """One signature: "sha256=" + hex HMAC-SHA256 over the timestamp, a dot and the raw body."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signatures: str, tolerance_s: float = 300) -> bool:
    """What a receiver does: one of the header's signatures is secret's, and the timestamp is recent (no replay)."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance_s
    except ValueError:
        return False
    expected = sign(secret, timestamp, body)
    return fresh and any([hmac.compare_digest(expected, s.strip()) for s in signatures.split(",")])


def signed_headers(secrets: Sequence[tuple[str, str]], delivery_id: str, body: bytes) -> dict[str, str]:
    """The headers of one attempt, signed now with each (key id, secret), newest first."""
    timestamp = str(int(time.time()))
    return {"Content-Type": "application/json", "User-Agent": "graft-webhook/1", DELIVERY_HEADER: delivery_id,
            TIMESTAMP_HEADER: timestamp, KEY_ID_HEADER: ", ".join(key_id for key_id, _ in secrets),
            SIGNATURE_HEADER: ", ".join(sign(secret, timestamp, body) for _, secret in secrets)}


def result_of(status: int | None) -> str:
    """What the owner is shown of an attempt's HTTP status: its class, or "no answer"."""
    return f"{status // 100}xx" if status is not None and 200 <= status < 600 else NO_ANSWER


def public_attempt(entry: dict[str, Any]) -> dict[str, Any]:
    """A logged attempt as its owner sees it: number, time and result only."""
    result = entry.get("result")
    return {"attempt": entry.get("attempt"), "at": entry.get("at"),
            "result": result if result in RESULTS else result_of(entry.get("status"))}


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
