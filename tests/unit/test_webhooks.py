"""Where job callbacks may go (internal and own addresses only when named), what is checked without DNS, signing."""
from __future__ import annotations

import ipaddress
import time

import pytest

from graft.shared.webhooks import (
    Policy, WebhookRefused, check_submitted, literal, own_addresses, public_attempt, resolve, result_of, service_hosts,
    sign, signed_headers, verify, vet_url,
)

SECRET = "unit-secret"
DEFAULT = Policy.of(())  # GRAFT_WEBHOOK_ALLOW unset


def fake_dns(table: dict[str, list[str]]):  # noqa: ANN201 - a resolver
    """A resolver that answers from table, resolves IP literals as the real one does, and refuses other names."""
    def resolver(host: str, port: int) -> list[str]:
        if host in table:
            return table[host]
        if literal(host) is None:
            raise WebhookRefused(f"cannot resolve {host}")
        return resolve(host, port)  # a literal: no DNS query
    return resolver


INTERNAL = [
    "http://127.0.0.1:6379/", "http://127.1:8080/", "http://2130706433:8080/", "http://0x7f.1/", "http://0177.0.0.1/",
    "http://127.9.9.9/", "http://[::1]:9000/", "http://0.0.0.0:8080", "http://[::]/", "http://10.0.0.1/x",
    "http://172.16.5.4/", "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data", "http://[fe80::1]/",
    "http://[fd00::1]/", "http://[fec0::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:10.0.0.1]/",
    "http://100.64.0.1/", "http://100.127.255.254/", "http://224.0.0.1/", "http://[ff02::1]/",
    "http://240.0.0.1/", "http://255.255.255.255/", "http://192.0.2.1/", "http://198.18.0.1/",
    "http://[2002:7f00:1::]/", "http://[64:ff9b::7f00:1]/", "http://[2001:db8::1]/",
]


@pytest.mark.parametrize("url", INTERNAL)
def test_internal_address_literals_are_refused_at_submission_and_at_send_time(url: str) -> None:
    with pytest.raises(WebhookRefused, match="may not reach"):
        check_submitted(url, DEFAULT)
    with pytest.raises(WebhookRefused, match="may not reach"):
        vet_url(url, DEFAULT, fake_dns({}))


@pytest.mark.parametrize(("host", "addresses"), [
    ("localhost", ["127.0.0.1", "::1"]), ("sneaky.test", ["203.0.114.7", "10.1.2.3"]),  # one internal is enough
    ("metadata.test", ["169.254.169.254"]), ("v6.test", ["::ffff:192.168.0.1"]),
])
def test_a_name_is_judged_by_what_it_resolves_to_when_sent(host: str, addresses: list[str]) -> None:
    url = f"http://{host}:8080/hook"
    check_submitted(url, DEFAULT)  # a name: the API does not resolve it on a request thread
    with pytest.raises(WebhookRefused, match="may not reach"):
        vet_url(url, DEFAULT, fake_dns({host: addresses}))


def test_submission_asks_no_dns() -> None:
    # A lookup of .invalid fails (RFC 6761): had the check resolved it, the URL would have been refused.
    check_submitted("https://does-not-exist.invalid/hook", DEFAULT)
    with pytest.raises(WebhookRefused, match="cannot resolve"):
        vet_url("https://does-not-exist.invalid/hook", DEFAULT)


@pytest.mark.parametrize("url", ["http://8.8.8.8/hook", "https://[2606:4700::1]/", "https://hooks.example.com/x?a=1",
                                 "https://HOOKS.example.com./x", "http://hooks_1.example.com:8080/"])
def test_public_addresses_pass(url: str) -> None:
    check_submitted(url, DEFAULT)
    dns = fake_dns({"hooks.example.com": ["93.184.215.14"], "hooks_1.example.com": ["1.1.1.1"]})
    target = vet_url(url, DEFAULT, dns)
    assert target.addresses and target.path.startswith("/")


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://8.8.8.8/x", "http or https"), ("file:///etc/passwd", "http or https"), ("gopher://8.8.8.8/", "http"),
    ("http://user:pw@8.8.8.8/", "credentials"), ("http://8.8.8.8:99999/", "valid URL"), ("http:///nohost", "no host"),
    ("http://8.8.8.8/" + "a" * 3000, "longer"), ("http://a..b/", "neither"), ("http://999.1.1.1/", "neither"),
    ("http://1.2.3.4.5/", "neither"), ("http://[fe80::1%25eth0]/", "neither"), ("http://a%00b/", "neither"),
    ("http://" + "a" * 64 + ".example/", "neither"),
])
def test_malformed_urls_are_refused_at_submission(url: str, reason: str) -> None:
    with pytest.raises(WebhookRefused, match=reason):
        check_submitted(url, DEFAULT)


def test_the_allow_list_opens_exactly_what_it_names() -> None:
    policy = Policy.of(("127.0.0.2/32", "10.1.0.0/16", "hooks.internal"))
    dns = fake_dns({"hooks.internal": ["10.9.9.9"], "other.internal": ["10.9.9.9"]})
    assert vet_url("http://127.0.0.2:8080/", policy, dns).addresses == ("127.0.0.2",)
    assert vet_url("http://10.1.2.3/", policy, dns).addresses == ("10.1.2.3",)
    assert vet_url("https://HOOKS.internal./h", policy, dns).host_header == "hooks.internal"
    for url in ("http://127.0.0.1/", "http://127.1/", "http://[::1]/", "http://10.2.0.1/", "http://other.internal/"):
        with pytest.raises(WebhookRefused):
            vet_url(url, policy, dns)


def test_the_services_own_addresses_need_an_entry_of_their_own() -> None:
    # The database on a public address and Redis inside a network the allow-list opens: neither is reachable by
    # default, nor through a wider CIDR; only an entry for that very address opens it.
    own = own_addresses(service_hosts("postgresql+psycopg://u:p@db.example:5432/g", "redis://:pw@10.0.0.5:6379/0"),
                        fake_dns({"db.example": ["8.8.4.4"]}))
    assert own == {ipaddress.ip_address("8.8.4.4"), ipaddress.ip_address("10.0.0.5")}
    for allow in ((), ("8.8.0.0/16", "10.0.0.0/8")):
        for url in ("http://8.8.4.4/", "http://10.0.0.5:6379/"):
            with pytest.raises(WebhookRefused):
                check_submitted(url, Policy.of(allow, own))
    check_submitted("http://8.8.4.5/", Policy.of((), own))  # its neighbour is an ordinary public address
    check_submitted("http://10.0.0.5/", Policy.of(("10.0.0.5/32",), own))


def test_service_hosts_and_own_addresses_without_dns() -> None:
    assert service_hosts("sqlite:////tmp/graft.db", "redis://127.0.0.1:6379/0") == ["127.0.0.1"]
    assert service_hosts("postgresql+psycopg://graft:p%40ss@[::1]:5432/graft", "redis://redis/0") == ["::1", "redis"]
    assert own_addresses(["redis", "127.0.0.1"], None) == {ipaddress.ip_address("127.0.0.1")}  # None: names skipped


def test_signatures_cover_timestamp_and_body_and_list_every_live_key() -> None:
    body, now = b'{"id": "j1"}', str(int(time.time()))
    signature = sign(SECRET, now, body)
    assert signature.startswith("sha256=") and verify(SECRET, now, body, signature)
    assert not verify("wrong", now, body, signature)
    assert not verify(SECRET, now, body + b" ", signature)
    assert not verify(SECRET, str(int(now) - 1), body, signature)  # the timestamp is signed
    old = str(int(time.time()) - 3600)
    assert not verify(SECRET, old, body, sign(SECRET, old, body))  # a replay of an old delivery
    headers = signed_headers([("whk_new", "new-secret"), ("whk_old", "old-secret")], "d1", body)
    assert headers["X-Graft-Key-Id"] == "whk_new, whk_old"
    ts, signatures = headers["X-Graft-Timestamp"], headers["X-Graft-Signature"]
    assert signatures.split(", ")[0] == sign("new-secret", ts, body)  # the newest first
    assert verify("new-secret", ts, body, signatures) and verify("old-secret", ts, body, signatures)
    assert not verify("another-secret", ts, body, signatures)


@pytest.mark.parametrize(("entry", "shown"), [
    ({"attempt": 1, "at": "t", "result": "2xx"}, "2xx"),
    ({"attempt": 2, "at": "t", "status": 404, "error": "HTTP 404", "ms": 3}, "4xx"),
    ({"attempt": 3, "at": "t", "status": None, "error": "127.0.0.1: NewConnectionError", "ms": 1}, "no answer"),
    ({"attempt": 4, "at": "t", "status": 302, "error": "HTTP 302"}, "3xx"),
])
def test_an_attempt_shows_its_owner_the_class_only(entry: dict, shown: str) -> None:
    assert public_attempt(entry) == {"attempt": entry["attempt"], "at": "t", "result": shown}
    assert [result_of(s) for s in (200, 299, 500, 99, None)] == ["2xx", "2xx", "5xx", "no answer", "no answer"]
