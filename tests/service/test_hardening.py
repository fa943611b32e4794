"""Hardening, attacked against real `graft api` processes (and a real worker where a job must run): the
failed-authentication limit never refuses a valid token and counts clients behind trusted proxies apart; every
response carries the security headers; errors and events hide server folders and worker hosts; a symlink never
leads a job into another user's dataset; results CSV cells cannot run as spreadsheet formulas."""
from __future__ import annotations

import csv
import io
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
import requests

from graft.cli.sampledata import make_shapes_dataset
from graft.shared import lifecycle, users
from graft.shared.db import session_scope
from graft.shared.models import READY, UPLOAD, DatasetRecord, Job, JobEvent, PredictionResult, new_id
from tests.archives import good
from tests.helpers import api_process

TINY = {"backbone": "resnet18", "pretrained": False, "image_size": 32, "epochs": 1, "batch_size": 8}
BAD = {"Authorization": "Bearer guess"}


def _forget_limits(env: dict[str, str]) -> None:
    client = redis.Redis.from_url(env["GRAFT_REDIS_URL"])
    for key in client.scan_iter(f"*graft-auth:{env['GRAFT_QUEUE']}*"):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def proxied(service_env: dict[str, str]) -> Iterator[str]:
    """A `graft api` behind one trusted proxy hop, with the default limit of 30 failures a minute."""
    env = {**service_env, "GRAFT_TRUSTED_PROXIES": "1", "GRAFT_AUTH_FAIL_LIMIT": "30/minute",
           "GRAFT_QUEUE": f"graft-hard-{uuid.uuid4().hex[:6]}"}
    try:
        with api_process(env) as (url, _proc):
            yield url
    finally:
        _forget_limits(env)


def _get(url: str, headers: dict[str, str], client: str | None = None) -> int:
    extra = {"X-Forwarded-For": client} if client else {}
    return requests.get(f"{url}/api/v1/jobs", headers={**headers, **extra}, timeout=10).status_code


def test_a_valid_token_is_served_while_its_address_is_over_the_limit(service_env: dict[str, str]) -> None:
    env = {**service_env, "GRAFT_AUTH_FAIL_LIMIT": "30/minute", "GRAFT_QUEUE": f"graft-hard-{uuid.uuid4().hex[:6]}"}
    good_token = {"Authorization": f"Bearer {service_env['GRAFT_API_TOKENS']}"}
    try:
        with api_process(env) as (url, _proc):  # no trusted proxy (the default): every client here is 127.0.0.1
            assert [_get(url, BAD) for _ in range(40)] == [401] * 30 + [429] * 10
            assert _get(url, good_token) == 200  # everyone behind the same address keeps working
            refused = requests.get(f"{url}/api/v1/jobs", headers=BAD, timeout=10)
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
            assert "too many failed authentications" in refused.json()["error"]
            assert requests.get(f"{url}/api/v1/jobs", timeout=10).status_code == 429  # no token at all: a failure too
            # With 0 trusted hops X-Forwarded-For is ignored: a forged client address does not reset the count.
            assert _get(url, BAD, client="198.51.100.7") == 429
            assert _get(url, good_token, client="198.51.100.7") == 200
    finally:
        _forget_limits(env)


def test_behind_a_trusted_proxy_each_client_is_counted_apart(proxied: str, service_env: dict[str, str]) -> None:
    good_token = {"Authorization": f"Bearer {service_env['GRAFT_API_TOKENS']}"}
    guesser, bystander = "203.0.113.10", "203.0.113.20"
    assert [_get(proxied, BAD, guesser) for _ in range(31)] == [401] * 30 + [429]
    assert _get(proxied, BAD, bystander) == 401  # another client behind the same proxy: its own count
    assert _get(proxied, good_token, guesser) == 200
    # The proxy appends the address it saw: only the last hop counts, whatever the client wrote before it.
    assert _get(proxied, BAD, f"{bystander}, {guesser}") == 429


@pytest.mark.parametrize(("path", "status"), [
    ("/", 200), ("/docs", 200), ("/docs/assets/swagger-ui-bundle.js", 200), ("/static/js/app.js", 200),
    ("/static/vendor/alpine-csp.min.js", 200), ("/api/v1/openapi.json", 200), ("/healthz", 200),
    ("/api/v1/jobs", 401), ("/no/such/page", 404),
])
def test_every_response_carries_the_security_headers(proxied: str, path: str, status: int) -> None:
    # each request from its own client address: the failure counts of the other tests do not matter here
    response = requests.get(f"{proxied}{path}", headers={"X-Forwarded-For": f"192.0.2.{len(path)}"}, timeout=10)
    assert response.status_code == status
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    policy = dict(p.strip().split(" ", 1) for p in response.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert policy["script-src"] == "'self'"  # no 'unsafe-eval', no 'unsafe-inline': the dashboard too


# ---- a real worker: what users read of a failed job, and roots per job ---------------------------------------------

class People:
    """A `graft api` on the session's database and queue (served by the session's worker), and two users."""

    def __init__(self, url: str, env: dict[str, str], tokens: dict[str, str]) -> None:
        self.url, self.env, self.tokens = url, env, tokens

    def call(self, who: str, method: str, path: str, **kwargs: Any) -> requests.Response:  # noqa: ANN401
        """One request as who (alice or bob)."""
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kwargs)

    def wait(self, who: str, kind: str, ident: str, timeout: float = 240) -> dict[str, Any]:
        """Poll a job or a dataset until it is finished (or inspected)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.call(who, "GET", f"/api/v1/{kind}/{ident}").json()
            if body["status"] not in ("queued", "running", "inspecting"):
                return body
            time.sleep(0.3)
        raise AssertionError(f"{kind} {ident} not finished after {timeout}s")

    def uploaded(self, who: str, entries: dict[str, bytes]) -> tuple[str, Path]:
        """A dataset as an inspected upload leaves it (a ready row, its folder under the artifacts' datasets/), made
        directly (an upload's inspection is tested elsewhere): its id and the folder the API never shows."""
        folder = Path(self.env["GRAFT_ARTIFACTS_DIR"]) / "datasets" / new_id() / "data"
        for name, data in entries.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        with session_scope(self.env["GRAFT_DATABASE_URL"]) as session:
            owner = users.authenticate(session, self.tokens[who]).id
            row = DatasetRecord(id=folder.parent.name, name=who, source=UPLOAD, path=str(folder), status=READY,
                                classes={"cats": 3, "dogs": 3}, num_images=6, report={"issues": []}, owner_id=owner)
            session.add(row)
        return folder.parent.name, folder


@pytest.fixture(scope="module")
def people(service_env: dict[str, str], worker: Any) -> Iterator[People]:  # noqa: ANN401, ARG001 - the worker runs
    tokens = {}
    with session_scope(service_env["GRAFT_DATABASE_URL"]) as session:
        for name in ("alice", "bob"):
            user = users.add_user(session, f"{name}-{uuid.uuid4().hex[:6]}")
            tokens[name] = users.create_token(session, user)[1]
    with api_process(service_env) as (url, _proc):
        yield People(url, service_env, tokens)


def test_errors_and_events_hide_server_folders_and_worker_hosts(people: People, service_env: dict[str, str]) -> None:
    artifacts = Path(service_env["GRAFT_ARTIFACTS_DIR"])
    host = socket.gethostname()  # the worker runs here: Celery names it w1@<this host>
    dataset_id, folder = people.uploaded("alice", good(per_class=3))
    shutil.rmtree(folder)  # its folder vanishes: the worker's error names where it was
    answer = people.call("alice", "POST", "/api/v1/jobs/train", json={"dataset_id": dataset_id, **TINY})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    job = people.wait("alice", "jobs", job_id)
    assert job["status"] == "failed" and "<artifacts>/datasets/" in job["error"], job["error"]
    with session_scope(service_env["GRAFT_DATABASE_URL"]) as session:  # the raw text stays for operators
        row = session.get(Job, job_id)
        assert str(artifacts) in row.error and row.worker.endswith(f"@{host}")
        messages = [e.message or "" for e in session.query(JobEvent).filter_by(job_id=job_id)]
        assert any(f"@{host} (pid" in m for m in messages), messages
        row.error += f" (on worker {row.worker}, host {host})"  # as an error that names its host would read
        node = row.worker.partition("@")[0]
    job = people.call("alice", "GET", f"/api/v1/jobs/{job_id}").json()
    assert job["worker"] == f"{node}@<host>" and job["error"].endswith(f"(on worker {node}@<host>, host <host>)")
    shown = "".join(people.call("alice", "GET", f"/api/v1/jobs/{job_id}{part}").text
                    for part in ("", "/events", "/logs")) + people.call("alice", "GET", "/api/v1/jobs").text
    assert "attempt 1 on" in shown and str(artifacts) not in shown and str(artifacts.resolve()) not in shown
    assert not re.search(rf"(?<![\w.-]){re.escape(host)}(?![\w-])", shown), "a worker host shown to a user"


def test_a_symlink_never_leads_a_job_into_another_users_dataset(people: People, data_root: Path) -> None:
    _bobs, loot = people.uploaded("bob", good(per_class=3))  # classes cats and dogs
    mine = make_shapes_dataset(data_root / f"alice-{uuid.uuid4().hex[:6]}", per_class=5, size=32,
                               classes=("circles", "squares"))
    (mine / "cats").symlink_to(loot / "cats")  # a whole class folder of bob's
    (mine / "circles" / "stolen.png").symlink_to(sorted((loot / "dogs").iterdir())[0])  # one of bob's files
    planted = {"circles/stolen.png", "cats/"}

    # a data_dir job: roots are the data roots, which hold no uploaded dataset
    job = people.wait("alice", "jobs", people.call("alice", "POST", "/api/v1/jobs/train",
                                                   json={"data_dir": str(mine), **TINY}).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert {s["path"] for s in job["metrics"]["skipped_files"]} == planted
    assert people.call("alice", "GET", f"/api/v1/models/{job['model_id']}").json()["classes"] == ["circles", "squares"]

    # the folder as alice's dataset: its inspection, then a dataset_id job, read only inside that folder
    answer = people.call("alice", "POST", "/api/v1/datasets", json={"path": str(mine), "name": "mine"})
    assert answer.status_code == 202, answer.text
    dataset = people.wait("alice", "datasets", answer.json()["id"])
    issue = next(i for i in dataset["issues"] if i["code"] == "outside_roots")
    assert set(issue["files"]) == planted and set(dataset["classes"]) == {"circles", "squares"}
    job = people.wait("alice", "jobs", people.call("alice", "POST", "/api/v1/jobs/train",
                                                   json={"dataset_id": dataset["id"], **TINY}).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert {s["path"] for s in job["metrics"]["skipped_files"]} == planted
    assert all("outside the data roots" in s["reason"] for s in job["metrics"]["skipped_files"])


@pytest.mark.parametrize("cell", ["=HYPERLINK(\"http://evil\")", "+1+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_results_csv_cells_never_start_a_formula(people: People, service_env: dict[str, str], cell: str) -> None:
    with session_scope(service_env["GRAFT_DATABASE_URL"]) as session:  # the rows a worker stores for such names
        owner = users.authenticate(session, people.tokens["alice"]).id
        job = lifecycle.create_job(session, "predict", {"model_id": "m", "input_dir": "/x", "top_k": 1}, owner)
        job.status = lifecycle.SUCCEEDED
        session.add_all([PredictionResult(job_id=job.id, chunk=0, path=f"{cell}.jpg", label=cell, confidence=0.9),
                         PredictionResult(job_id=job.id, chunk=0, path="b.jpg", error=cell, confidence=None)])
        job_id = job.id
    answer = people.call("alice", "GET", f"/api/v1/jobs/{job_id}/results?format=csv")
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/csv")
    header, *rows = csv.reader(io.StringIO(answer.text, newline=""))
    assert [r[0] for r in rows] == [f"'{cell}.jpg", "b.jpg"]
    assert rows[0][header.index("label")] == f"'{cell}" and rows[1][header.index("error")] == f"'{cell}"
    assert rows[0][header.index("confidence")] == "0.9"  # numbers stay numbers
    json_rows = people.call("alice", "GET", f"/api/v1/jobs/{job_id}/results").json()["items"]
    assert json_rows[0]["label"] == cell  # JSON is data, not a spreadsheet: unchanged
