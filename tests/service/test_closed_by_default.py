"""Closed by default: `graft api` needs a credential (or an explicit, loud, loopback-only opt-out), answers 401 with
a Bearer challenge, and reads its tokens from a secret file too. Real `graft api` processes, real Redis and database."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, api_process


def _without_tokens(service_env: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **service_env}
    env.pop("GRAFT_API_TOKENS", None)
    return env


@pytest.mark.parametrize(("args", "said"), [
    ((), "no credential configured: set GRAFT_API_TOKENS"),
    (("--insecure-no-auth", "--host", "0.0.0.0"), "only on a loopback address"),
])
def test_graft_api_refuses_to_start_open(service_env: dict[str, str], args: tuple[str, ...], said: str) -> None:
    done = subprocess.run([sys.executable, "-m", "graft.cli.main", "api", "--port", "1", *args], cwd=ROOT,
                          env=_without_tokens(service_env), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and said in done.stderr, done.stderr


def test_the_explicit_opt_out_serves_on_loopback_and_says_so(service_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    env = {k: v for k, v in service_env.items() if k != "GRAFT_API_TOKENS"}
    with api_process(env, args=("--insecure-no-auth",), log=log) as (url, _proc):
        assert requests.get(f"{url}/api/v1/jobs", timeout=5).status_code == 200  # no token needed: it is open
    assert "NO AUTHENTICATION" in log.read_text()


def test_401_carries_a_bearer_challenge_and_tokens_come_from_a_file(service_env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    secret = tmp_path / "tokens"
    secret.write_text("first-token\nsecond-token\n")  # one per line, as a mounted secret file holds them
    env = {k: v for k, v in service_env.items() if k != "GRAFT_API_TOKENS"}
    with api_process({**env, "GRAFT_API_TOKENS_FILE": str(secret)}) as (url, _proc):
        missing = requests.get(f"{url}/api/v1/jobs", timeout=5)
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = requests.get(f"{url}/api/v1/jobs", headers={"Authorization": "Bearer nope"}, timeout=5)
        assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
        for token in ("first-token", "second-token"):
            ok = requests.get(f"{url}/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=5)
            assert ok.status_code == 200, ok.text
