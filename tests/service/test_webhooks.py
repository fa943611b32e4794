"""Webhooks against a real `graft api` and a real worker: each user's callbacks signed with that user's own secret
(made and rotated with `graft webhook-secrets`), and callbacks aimed at the server's own loopback (Redis, a
listener, a closed port, in every spelling) refused, with nothing but "no answer" shown to the user.

The module has its own database, API process and worker. The worker serves only the interactive queue, so the
training jobs submitted here stay queued until the test cancels them: a cancelled job is a finished one, and its
callback goes out at once, with no training to wait for. The receivers listen on 127.0.0.2, the one address
GRAFT_WEBHOOK_ALLOW names; the attacks aim at 127.0.0.1 and ::1, which it does not.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from graft.shared.config import Config
from graft.shared.db import session_scope
from graft.shared.users import add_user, create_token
from graft.shared.webhook_secrets import create_secret, public_id
from graft.shared.webhooks import KEY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.helpers import ROOT, TOKEN, Receiver, api_process, private_env, running_worker

ALLOWED = "127.0.0.2"


@dataclass
class Hooks:
    """The module's API, its environment, and a data folder a train request may name."""

    url: str
    env: dict[str, str]
    data_dir: str

    def post(self, token: str, callback_url: str) -> requests.Response:
        """Submit a training job with a callback."""
        return requests.post(f"{self.url}/api/v1/jobs/train", headers={"Authorization": f"Bearer {token}"},
                             json={"data_dir": self.data_dir, "callback_url": callback_url}, timeout=30)

    def start(self, token: str, callback_url: str) -> str:
        """Submit a job with a callback and cancel it at once (a finished job: its callback is due); its id."""
        response = self.post(token, callback_url)
        assert response.status_code == 202, response.text
        assert response.json()["callback"]["state"] == "waiting"
        job_id = response.json()["id"]
        cancel = requests.post(f"{self.url}/api/v1/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {token}"},
                               timeout=30)
        assert cancel.status_code == 200, cancel.text
        return job_id

    def settled(self, token: str, job_id: str, timeout: float = 30) -> dict:
        """The job once its callback is delivered or failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = requests.get(f"{self.url}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"},
                               timeout=30).json()
            if job["callback"]["state"] in ("delivered", "failed"):
                return job
            time.sleep(0.3)
        raise AssertionError(f"callback of job {job_id} not settled after {timeout}s: {job['callback']}")

    def finish(self, token: str, callback_url: str) -> dict:
        """A finished job with a callback, once the callback settled."""
        return self.settled(token, self.start(token, callback_url))

    def graft(self, *args: str) -> str:
        """Run a `graft` command on the server's environment; its output."""
        done = subprocess.run([sys.executable, "-m", "graft.cli.main", *args], cwd=ROOT, env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def hooks(service_env: dict[str, str], data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hooks]:
    base = tmp_path_factory.mktemp("hooks")
    env = private_env(service_env, base, "hooks", GRAFT_WEBHOOK_ALLOW=f"{ALLOWED}/32",
                      GRAFT_WEBHOOK_BACKOFF_SECONDS="1", GRAFT_WEBHOOK_MAX_SECONDS="3")
    with api_process(env) as (url, _), running_worker(env, "hooks", base / "worker.log", queues="interactive"):
        yield Hooks(url, env, str(data_root))


def _user(hooks: Hooks, name: str, secret: bool = True) -> tuple[str, str, str]:
    """A user of the module's database: (token, webhook key id, webhook secret), made as `graft users add` and
    `graft webhook-secrets create` make them (the commands themselves run in the rotation test)."""
    with session_scope(hooks.env["GRAFT_DATABASE_URL"]) as session:
        user = add_user(session, name)
        _, token = create_token(session, user)
        if not secret:
            return token, "", ""
        row, webhook_secret = create_secret(session, user, Config.from_env(hooks.env).webhook_keys)
        return token, public_id(row), webhook_secret


def _verifies(secret: str, headers: dict[str, str], body: bytes) -> bool:
    return verify(secret, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])


@pytest.mark.both_databases
def test_each_users_receiver_verifies_its_own_users_callbacks(hooks: Hooks) -> None:
    (alice, alice_id, alice_secret), (bob, _, bob_secret) = _user(hooks, "alice"), _user(hooks, "bob")
    with Receiver([500], host=ALLOWED) as a_receiver, Receiver(host=ALLOWED) as b_receiver:
        url = f"{a_receiver.url}/hooks/graft?source=test"
        a_job, b_job = hooks.finish(alice, url), hooks.finish(bob, b_receiver.url)
    assert a_job["callback"]["state"] == "delivered" and a_job["callback"]["url"] == url
    assert [(a["attempt"], a["result"]) for a in a_job["callback"]["attempts"]] == [(1, "5xx"), (2, "2xx")]
    assert len(a_receiver.received) == 2 and len(b_receiver.received) == 1
    for headers, body in a_receiver.received:
        assert headers[KEY_ID_HEADER] == alice_id and _verifies(alice_secret, headers, body)
        assert not _verifies(bob_secret, headers, body)  # bob's receiver cannot take alice's callbacks for its own
        assert json.loads(body)["id"] == a_job["id"] and json.loads(body)["status"] == "cancelled"
    headers, body = b_receiver.received[0]
    assert _verifies(bob_secret, headers, body) and not _verifies(alice_secret, headers, body)
    assert a_receiver.received[0][1] == a_receiver.received[1][1]  # every attempt sends the same job JSON


def test_rotation_keeps_the_old_secret_valid_until_it_is_revoked(hooks: Hooks) -> None:
    token, old_id, old_secret = _user(hooks, "carol")
    out = hooks.graft("webhook-secrets", "create", "carol").splitlines()
    new_id, new_secret = out[0].split()[3], out[-1]
    listed = hooks.graft("webhook-secrets", "list", "carol")
    assert old_id in listed and new_id in listed and old_secret not in listed and new_secret not in listed
    with Receiver(host=ALLOWED) as receiver:
        hooks.finish(token, receiver.url)
        assert hooks.graft("webhook-secrets", "revoke", old_id).strip() == f"revoked {old_id}"
        hooks.finish(token, receiver.url)
    (during, body1), (after, body2) = receiver.received
    assert during[KEY_ID_HEADER] == f"{new_id}, {old_id}" and after[KEY_ID_HEADER] == new_id
    assert _verifies(new_secret, during, body1) and _verifies(old_secret, during, body1)
    assert _verifies(new_secret, after, body2) and not _verifies(old_secret, after, body2)


@pytest.fixture(scope="module")
def listeners() -> Iterator[list[Receiver]]:
    """Loopback listeners that must never hear a callback: on 127.0.0.1, and on ::1 where the host has IPv6."""
    with Receiver() as v4:
        try:
            v6 = Receiver(host="::1")
        except OSError:  # no IPv6 loopback: [::1] is still refused, with nothing there to hear it
            yield [v4]
            return
        with v6:
            yield [v4, v6]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((ALLOWED, 0))
        return sock.getsockname()[1]


SUBMISSION_ATTACKS = [
    "http://127.0.0.1:{redis}/", "http://127.0.0.1:{port}/admin/x", "http://127.1:{port}/", "http://2130706433:{port}/",
    "http://0x7f.1:{port}/", "http://[::1]:{v6}/", "http://0.0.0.0:{port}", "http://[::ffff:127.0.0.1]:{port}/",
    "http://127.0.0.1:{closed}/", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/",
]


@pytest.mark.parametrize("template", SUBMISSION_ATTACKS)
def test_a_loopback_or_internal_literal_is_refused_at_submission(
        hooks: Hooks, listeners: list[Receiver], template: str) -> None:
    token, _, _ = _user(hooks, f"mallory{SUBMISSION_ATTACKS.index(template)}")
    url = template.format(redis=urlsplit(hooks.env["GRAFT_REDIS_URL"]).port or 6379, port=listeners[0].port,
                          v6=listeners[-1].port, closed=_closed_port())
    response = hooks.post(token, url)
    assert response.status_code == 400 and response.json()["field"] == "callback_url", response.text
    assert "may not reach" in response.json()["detail"]
    auth = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{hooks.url}/api/v1/jobs", headers=auth, timeout=30).json()["items"] == []
    assert all(listener.received == [] for listener in listeners)


def test_names_and_dead_ports_fail_at_send_time_with_no_detail(
        hooks: Hooks, listeners: list[Receiver]) -> None:
    token, _, _ = _user(hooks, "eve")
    port, redis = listeners[0].port, urlsplit(hooks.env["GRAFT_REDIS_URL"]).port or 6379
    targets = [f"http://localhost:{port}/", f"http://localhost:{redis}/", f"http://{ALLOWED}:{_closed_port()}/"]
    jobs = [hooks.settled(token, job_id) for job_id in [hooks.start(token, target) for target in targets]]
    for target, job in zip(targets, jobs):
        callback = job["callback"]
        assert callback["state"] == "failed" and callback["attempts"], callback
        assert {a["result"] for a in callback["attempts"]} == {"no answer"}
        assert all(set(a) == {"attempt", "at", "result"} for a in callback["attempts"])
        shown = json.dumps({k: v for k, v in callback.items() if k != "url"}) + json.dumps(job["error"])
        for clue in ("Error", "Connection", "refused", "Disconnected", "127.0.0.1", "::1", "resolve", "ALLOW"):
            assert clue not in shown, (target, shown)
    assert all(listener.received == [] for listener in listeners)


@pytest.mark.parametrize(("who", "reason"), [("admin", "belongs to no user"), ("no-secret", "has no webhook secret")])
def test_a_caller_who_cannot_sign_may_not_ask_for_callbacks(hooks: Hooks, who: str, reason: str) -> None:
    token = TOKEN if who == "admin" else _user(hooks, "dave", secret=False)[0]
    with Receiver(host=ALLOWED) as receiver:
        response = hooks.post(token, receiver.url)
    assert response.status_code == 400 and reason in response.json()["detail"], response.text
