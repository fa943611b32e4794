"""Closed by default: `graft api` needs a credential (or an explicit, loud, loopback-only opt-out), answers 401 with
a Bearer challenge, and reads its tokens from a secret file too. Real `graft api` processes, real Redis and database."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, api_process


def _without_tokens(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "GRAFT_API_TOKENS"}


@pytest.mark.parametrize(("args", "said"), [
    ((), "no credential configured: set GRAFT_API_TOKENS"),
    (("--insecure-no-auth", "--host", "0.0.0.0"), "only on a loopback address"),
])
def test_graft_api_refuses_to_start_open(service_env: dict[str, str], args: tuple[str, ...], said: str) -> None:
    done = subprocess.run([sys.executable, "-m", "graft.cli.main", "api", "--port", "1", *args], cwd=ROOT,
                          env=_without_tokens({**os.environ, **service_env}), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and said in done.stderr, done.stderr


def test_the_explicit_opt_out_serves_on_loopback_and_says_so(service_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    with api_process(_without_tokens(service_env), args=("--insecure-no-auth",), log=log) as (url, _proc):
        assert requests.get(f"{url}/api/v1/jobs", timeout=5).status_code == 200  # no token needed: it is open
    assert "NO AUTHENTICATION" in log.read_text()


def test_401_carries_a_bearer_challenge_and_tokens_come_from_a_file(service_env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    secret = tmp_path / "tokens"
    secret.write_text("first-token\nsecond-token\n")  # one per line, as a mounted secret file holds them
    with api_process({**_without_tokens(service_env), "GRAFT_API_TOKENS_FILE": str(secret)}) as (url, _proc):
        missing = requests.get(f"{url}/api/v1/jobs", timeout=5)
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = requests.get(f"{url}/api/v1/jobs", headers={"Authorization": "Bearer nope"}, timeout=5)
        assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
        for token in ("first-token", "second-token"):
            ok = requests.get(f"{url}/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=5)
            assert ok.status_code == 200, ok.text


def test_repeated_failed_authentications_are_refused_with_429(service_env: dict[str, str]) -> None:
    import redis

    queue = f"graft-auth-{uuid.uuid4().hex[:6]}"  # the limiter's Redis keys are this server's own
    env = {**service_env, "GRAFT_AUTH_FAIL_LIMIT": "3/minute", "GRAFT_QUEUE": queue}
    good = {"Authorization": f"Bearer {service_env['GRAFT_API_TOKENS']}"}
    try:
        with api_process(env) as (url, _proc):
            for _ in range(5):  # a client that authenticates is never counted
                assert requests.get(f"{url}/api/v1/jobs", headers=good, timeout=5).status_code == 200
            bad = {"Authorization": "Bearer guess"}
            assert [requests.get(f"{url}/api/v1/jobs", headers=bad, timeout=5).status_code for _ in range(3)] == [401] * 3
            refused = requests.get(f"{url}/api/v1/jobs", headers=bad, timeout=5)
            assert refused.status_code == 429 and refused.headers["Content-Type"] == "application/problem+json"
            assert "too many failed authentications" in refused.json()["error"] and "Retry-After" in refused.headers
            # Only failures are refused: a right token from that address is still served (test_hardening.py).
            assert requests.get(f"{url}/api/v1/jobs", headers=good, timeout=5).status_code == 200
            assert requests.get(f"{url}/healthz", timeout=5).status_code == 200  # health checks are not limited
    finally:
        client = redis.Redis.from_url(service_env["GRAFT_REDIS_URL"])
        for key in client.scan_iter(f"*graft-auth:{queue}*"):
            client.delete(key)
        client.close()
