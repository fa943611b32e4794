"""Users, tokens and ownership against a real `graft api` process on PostgreSQL and Redis (no worker: what is
queued stays queued). Two users and an admin: each endpoint given another user's id answers 404, lists are
filtered, admins (a user made with --admin, or a GRAFT_API_TOKENS token) see everything, revoked tokens are 401,
tokens are stored hashed with their last use, quotas answer 429/507 and record nothing."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
import requests
from sqlalchemy import create_engine, func, select, text

from graft.api.owners import MIN_PREFIX
from graft.client import Client, QuotaExceeded
from graft.shared import lifecycle, users
from graft.shared.db import session_scope
from graft.shared.files import stored_cost
from graft.shared.models import READY, DatasetRecord, Job, PredictionResult, TrainedModel, Upload, new_id
from graft.shared.schema import upgrade
from graft.shared.storage import model_dir
from graft.shared.thumbs import (THUMBS_DIR, dataset_thumbs_dir, job_thumbs_dir, result_thumb_name,
                                 write_predictions)
from graft.shared.uploads import upload_dir
from tests.helpers import POSTGRES_URL, ROOT, TOKEN, api_client, api_process

pytestmark = pytest.mark.postgres
MB = 1024 * 1024
JPEG = b"\xff\xd8\xff\xe0 never decoded: no worker runs"


def _graft(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The real `graft` command, as an operator runs it on the server."""
    return subprocess.run([sys.executable, "-m", "graft.cli.main", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def _seed(env: dict[str, str], owner_id: str | None) -> dict[str, str]:
    """One object of every kind owned by owner_id (None: a row from before owners); their ids by name."""
    artifacts, data = Path(env["GRAFT_ARTIFACTS_DIR"]), Path(env["GRAFT_DATA_ROOTS"])
    upload = new_id()
    upload_dir(artifacts, upload).mkdir(parents=True)
    (upload_dir(artifacts, upload) / "x.jpg").write_bytes(JPEG)
    with session_scope(env["GRAFT_DATABASE_URL"]) as session:
        queued = lifecycle.create_job(session, "train", {"data_dir": str(data)}, owner_id)
        trained = lifecycle.create_job(session, "train", {"data_dir": str(data)}, owner_id)
        trained.status = lifecycle.SUCCEEDED
        model_id = new_id()
        weights = model_dir(artifacts, model_id) / "model.pt"
        weights.parent.mkdir(parents=True)
        weights.write_bytes(b"never loaded by the API")
        # What a worker leaves for the dashboard: out-of-sample predictions and thumbnails (never decoded here).
        write_predictions(weights.parent, [{"index": 0, "file": "a/1.jpg", "true": "a", "predicted": "b",
                                            "confidence": 0.6}], 1)
        (weights.parent / THUMBS_DIR).mkdir()
        (weights.parent / THUMBS_DIR / "0.jpg").write_bytes(JPEG)
        session.add(TrainedModel(id=model_id, job_id=trained.id, backbone="resnet18", classes=["a", "b"],
                                 image_size=64, metrics={}, path=str(weights), owner_id=owner_id))
        dataset = DatasetRecord(id=new_id(), name="shapes", source="path", path=str(data), status=READY,
                                classes={"a": 2, "b": 2}, num_images=4, report={"issues": []}, owner_id=owner_id)
        session.add_all([dataset, Upload(id=upload, owner_id=owner_id, size_bytes=len(JPEG))])
        dataset_thumbs_dir(artifacts, dataset.id).mkdir(parents=True)
        (dataset_thumbs_dir(artifacts, dataset.id) / "0.jpg").write_bytes(JPEG)
        predicted = lifecycle.create_job(session, "predict", {"model_id": model_id, "upload_id": upload, "top_k": 1},
                                         owner_id)
        predicted.status = lifecycle.SUCCEEDED
        session.add(PredictionResult(job_id=predicted.id, chunk=0, path="x.jpg", label="a", confidence=0.9))
        job_thumbs_dir(artifacts, predicted.id).mkdir(parents=True)
        (job_thumbs_dir(artifacts, predicted.id) / result_thumb_name("x.jpg")).write_bytes(JPEG)
        return {"queued": queued.id, "trained": trained.id, "predicted": predicted.id, "model": model_id,
                "dataset": dataset.id, "upload": upload, "data": str(data)}


@dataclass
class World:
    """The running API, its settings, each principal's token and each owner's objects."""

    url: str
    env: dict[str, str]
    tokens: dict[str, str]
    ids: dict[str, dict[str, str]]  # by owner: alice, bob, legacy
    user_ids: dict[str, str]

    def call(self, who: str, method: str, path: str, **kwargs: Any) -> requests.Response:  # noqa: ANN401
        """A request to the API with who's token."""
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def world(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A private PostgreSQL schema, artifacts, data root and queue; alice (made by the real CLI), bob, root (admin)
    and carol (tight quotas); each of alice, bob and nobody (legacy rows) owning one object of every kind."""
    schema = f"graft_owners_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_URL, pool_pre_ping=True)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    base = tmp_path_factory.mktemp("owners")
    (base / "data").mkdir()
    env = {**service_env, "GRAFT_DATABASE_URL": f"{POSTGRES_URL}?options=-csearch_path%3D{schema}",
           "GRAFT_ARTIFACTS_DIR": str(base / "artifacts"), "GRAFT_DATA_ROOTS": str(base / "data"),
           "GRAFT_QUEUE": f"graft-owners-{uuid.uuid4().hex[:8]}", "GRAFT_SYNC_PREDICT_WAIT_SECONDS": "1"}
    upgrade(env["GRAFT_DATABASE_URL"])
    made = _graft(env, "users", "add", "alice")
    assert made.returncode == 0, made.stderr
    tokens = {"alice": made.stdout.strip().splitlines()[-1], "legacy": TOKEN}
    with session_scope(env["GRAFT_DATABASE_URL"]) as session:
        for name, admin_role, quota in (("bob", False, None), ("root", True, None), ("carol", False, 1)):
            user = users.add_user(session, name, admin_role, max_jobs=quota, max_storage_mb=quota)
            tokens[name] = users.create_token(session, user)[1]
        user_ids = {u.name: u.id for u, _n in users.list_users(session)}
    ids = {owner: _seed(env, user_ids.get(owner)) for owner in ("alice", "bob", "legacy")}
    try:
        with api_process(env) as (url, _proc):
            yield World(url, env, tokens, ids, user_ids)
    finally:
        client = redis.Redis.from_url(env["GRAFT_REDIS_URL"])
        for key in client.scan_iter(f"*{env['GRAFT_QUEUE']}*"):
            client.delete(key)
        client.close()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


FILES = "files"  # the request sends one small image as multipart field 'file'
# Every endpoint that takes an id, and every body that names one: (method, path, JSON body or FILES).
FOREIGN = [
    ("GET", "/api/v1/jobs/{queued}", None),
    ("POST", "/api/v1/jobs/{queued}/cancel", None),
    ("GET", "/api/v1/jobs/{queued}/events", None),
    ("GET", "/api/v1/jobs/{queued}/logs", None),
    ("GET", "/api/v1/jobs/{predicted}/results", None),
    ("GET", "/api/v1/jobs/{predicted}/results?format=csv", None),
    ("GET", "/api/v1/models/{model}", None),
    ("GET", "/api/v1/models/{model}/download?format=onnx", None),
    ("DELETE", "/api/v1/models/{model}", None),
    ("POST", "/api/v1/models/{model}/predict", FILES),
    ("GET", "/api/v1/models/{model}/predictions", None),
    ("GET", "/api/v1/models/{model}/predictions/0/thumbnail", None),
    ("GET", "/api/v1/jobs/{predicted}/results/thumbnail?path=x.jpg", None),
    ("GET", "/api/v1/datasets/{dataset}", None),
    ("GET", "/api/v1/datasets/{dataset}/thumbnails/0.jpg", None),
    ("DELETE", "/api/v1/datasets/{dataset}", None),
    ("POST", "/api/v1/uploads/{upload}", FILES),
    ("POST", "/api/v1/jobs/train", {"dataset_id": "{dataset}"}),
    ("POST", "/api/v1/jobs/predict", {"model_id": "{model}", "input_dir": "{data}"}),
    ("POST", "/api/v1/jobs/predict", {"model_id": "{own_model}", "upload_id": "{upload}"}),
]


def _request(world: World, who: str, owner: str, method: str, path: str,
             body: Any, prefix: bool = False) -> requests.Response:  # noqa: ANN401
    values = {**world.ids[owner], "own_model": world.ids[who]["model"] if who in world.ids else ""}
    if prefix:  # each id's first MIN_PREFIX characters, as the dashboard shows them
        values = {k: v if k == "data" else v[:MIN_PREFIX] for k, v in values.items()}
    kwargs: dict[str, Any] = {}
    if body == FILES:
        kwargs["files"] = {"file": ("x.jpg", io.BytesIO(JPEG))}
    elif body is not None:
        kwargs["json"] = {k: v.format(**values) for k, v in body.items()}
    return world.call(who, method, path.format(**values), **kwargs)


def _intact(world: World, owner: str) -> None:
    """Everything owner had is still there, unchanged: a refused request did nothing."""
    ids = world.ids[owner]
    with session_scope(world.env["GRAFT_DATABASE_URL"]) as session:
        assert session.get(Job, ids["queued"]).status == lifecycle.QUEUED
        assert session.get(TrainedModel, ids["model"]) is not None
        assert session.get(DatasetRecord, ids["dataset"]) is not None
    assert [p.name for p in upload_dir(world.env["GRAFT_ARTIFACTS_DIR"], ids["upload"]).iterdir()] == ["x.jpg"]


@pytest.mark.parametrize("prefix", [False, True], ids=["id", "prefix"])
@pytest.mark.parametrize(("who", "owner"), [("bob", "alice"), ("alice", "legacy")])
@pytest.mark.parametrize(("method", "path", "body"), FOREIGN)
def test_another_users_id_answers_404_and_changes_nothing(world: World, who: str, owner: str, method: str,
                                                          path: str, body: Any, prefix: bool) -> None:  # noqa: ANN401
    response = _request(world, who, owner, method, path, body, prefix)
    assert response.status_code == 404, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "no " in response.json()["error"]  # worded as for an id that does not exist: nothing to probe
    _intact(world, owner)


@pytest.mark.parametrize("prefix", [False, True], ids=["id", "prefix"])
@pytest.mark.parametrize("who", ["alice", "root", "legacy"])
@pytest.mark.parametrize(("method", "path", "body"), [c for c in FOREIGN if c[0] == "GET"])
def test_the_owner_and_admins_read_it(world: World, who: str, method: str, path: str,
                                      body: Any, prefix: bool) -> None:  # noqa: ANN401
    response = _request(world, who, "alice", method, path, body, prefix)
    assert response.status_code in (200, 202), response.text  # 202: a download being exported (no worker here)


def test_an_id_prefix_works_in_the_cli_and_an_ambiguous_one_is_refused(world: World) -> None:
    model_id = world.ids["alice"]["model"]
    env = {**os.environ, "GRAFT_URL": world.url, "GRAFT_TOKEN": world.tokens["alice"]}
    shown = subprocess.run([sys.executable, "-m", "graft.cli.main", "models", "show", model_id[:MIN_PREFIX]],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and model_id in shown.stdout, shown.stdout + shown.stderr
    assert world.call("alice", "GET", f"/api/v1/models/{model_id[:MIN_PREFIX - 1]}").status_code == 404  # too short
    # a job made with a prefix records the full id: its worker must find the model
    made = world.call("alice", "POST", "/api/v1/jobs/predict",
                      json={"model_id": model_id[:MIN_PREFIX], "input_dir": world.ids["alice"]["data"]})
    with session_scope(world.env["GRAFT_DATABASE_URL"]) as session:
        job = session.get(Job, made.json()["id"])
        assert made.status_code == 202 and job.params["model_id"] == model_id, made.text
        session.delete(job)  # the module's other tests count alice's jobs
    twins = [f"{'ab' * 4}{n}{uuid.uuid4().hex[:23]}" for n in range(2)]  # two of alice's jobs share 8 characters
    with session_scope(world.env["GRAFT_DATABASE_URL"]) as session:
        session.add_all(Job(id=job_id, kind="train", status=lifecycle.QUEUED, params={}, progress={}, metrics={},
                            attempts=0, owner_id=world.user_ids["alice"]) for job_id in twins)
    try:
        both = world.call("alice", "GET", f"/api/v1/jobs/{twins[0][:MIN_PREFIX]}")
        assert both.status_code == 404 and "more than one job" in both.json()["error"], both.text
        assert world.call("alice", "GET", f"/api/v1/jobs/{twins[1][:MIN_PREFIX + 1]}").json()["id"] == twins[1]
    finally:  # the module's other tests count alice's jobs
        with session_scope(world.env["GRAFT_DATABASE_URL"]) as session:
            for job_id in twins:
                session.delete(session.get(Job, job_id))


@pytest.mark.parametrize(("path", "key"), [("/api/v1/jobs?limit=100", ("queued", "trained", "predicted")),
                                           ("/api/v1/models", ("model",)), ("/api/v1/datasets", ("dataset",))])
def test_lists_hold_only_ones_own_and_admins_see_all(world: World, path: str, key: tuple[str, ...]) -> None:
    def listed(who: str) -> set[str]:
        response = world.call(who, "GET", path)
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()["items"]}

    own = {owner: {world.ids[owner][k] for k in key} for owner in world.ids}
    assert listed("alice") == own["alice"] and listed("bob") == own["bob"]
    everything = set().union(*own.values())
    assert everything <= listed("root") and everything <= listed("legacy")  # rows without owner too
    foreign = world.call("bob", "GET", f"/api/v1/models?job_id={world.ids['alice']['trained']}")
    assert foreign.status_code == 200 and foreign.json()["items"] == []


def test_metrics_need_an_admin(world: World) -> None:
    assert world.call("alice", "GET", "/metrics").status_code == 403
    for admin in ("root", "legacy"):
        response = world.call(admin, "GET", "/metrics")
        assert response.status_code == 200 and "graft_jobs" in response.text


def test_new_objects_belong_to_their_maker(world: World) -> None:
    made = world.call("bob", "POST", "/api/v1/uploads", files={"file": ("y.jpg", io.BytesIO(JPEG))})
    assert made.status_code == 201, made.text
    upload = made.json()["id"]
    assert world.call("alice", "POST", f"/api/v1/uploads/{upload}",
                      files={"file": ("evil.jpg", io.BytesIO(JPEG))}).status_code == 404
    assert world.call("bob", "POST", f"/api/v1/uploads/{upload}",
                      files={"file": ("z.jpg", io.BytesIO(JPEG))}).status_code == 200
    job = world.call("bob", "POST", "/api/v1/jobs/predict",
                     json={"model_id": world.ids["bob"]["model"], "upload_id": upload})
    assert job.status_code == 202, job.text
    with session_scope(world.env["GRAFT_DATABASE_URL"]) as session:
        row = session.get(Upload, upload)
        assert row.owner_id == world.user_ids["bob"]
        assert row.size_bytes == stored_cost(2 * len(JPEG), 2)  # two files, each with its block and inode
        assert session.get(Job, job.json()["id"]).owner_id == world.user_ids["bob"]
    assert world.call("alice", "GET", f"/api/v1/jobs/{job.json()['id']}").status_code == 404
    # graft.client with a user's token sees that user's world
    with Client(world.url, world.tokens["bob"]) as client:
        assert job.json()["id"] in {j["id"] for j in client.jobs()}
        assert world.ids["alice"]["queued"] not in {j["id"] for j in client.jobs()}


def test_tokens_are_hashed_used_and_revocable(world: World) -> None:
    with session_scope(world.env["GRAFT_DATABASE_URL"]) as session:
        row, token = users.create_token(session, session.get(users.User, world.user_ids["bob"]))
        token_id = users.public_id(row)
    assert requests.get(f"{world.url}/api/v1/jobs", headers={"Authorization": f"Bearer {token}"},
                        timeout=10).status_code == 200
    with session_scope(world.env["GRAFT_DATABASE_URL"]) as session:
        stored = "\n".join(str(r) for table in ("api_tokens", "users")
                           for r in session.execute(text(f"SELECT * FROM {table}")).all())
        assert all(t not in stored for t in (*world.tokens.values(), token))  # no token in the clear
        assert session.get(users.ApiToken, row.id).last_used_at is not None
    revoked = _graft(world.env, "tokens", "revoke", token_id)
    assert revoked.returncode == 0 and f"revoked {token_id}" in revoked.stdout, revoked.stderr
    refused = requests.get(f"{world.url}/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    assert world.call("bob", "GET", "/api/v1/jobs").status_code == 200  # bob's other token still works


def test_graft_api_starts_with_user_tokens_alone(world: World) -> None:
    env = {k: v for k, v in world.env.items() if k != "GRAFT_API_TOKENS"}
    with api_process(env) as (url, _proc):
        headers = {"Authorization": f"Bearer {world.tokens['alice']}"}
        assert requests.get(f"{url}/api/v1/jobs", headers=headers, timeout=10).status_code == 200
        assert requests.get(f"{url}/api/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=10).status_code == 401  # no longer configured


def _counts(world: World) -> tuple[int, int, int]:
    """carol's jobs, her upload rows, and the upload folders on disk."""
    with session_scope(world.env["GRAFT_DATABASE_URL"]) as session:
        jobs = session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == world.user_ids["carol"]))
        rows = session.scalar(select(func.count()).select_from(Upload)
                              .where(Upload.owner_id == world.user_ids["carol"]))
    folders = len(list((Path(world.env["GRAFT_ARTIFACTS_DIR"]) / "uploads").iterdir()))
    return jobs, rows, folders


def test_quotas_answer_429_and_507_and_record_nothing(world: World) -> None:
    """carol may have 1 active job and store 1 MB."""
    data = world.ids["alice"]["data"]
    first = world.call("carol", "POST", "/api/v1/jobs/train", json={"data_dir": data})
    assert first.status_code == 202, first.text
    before = _counts(world)
    for method, path, kwargs in [("POST", "/api/v1/jobs/train", {"json": {"data_dir": data}}),
                                 ("POST", "/api/v1/jobs/predict",
                                  {"data": {"model_id": world.ids["alice"]["model"]},
                                   "files": {"file": ("x.jpg", io.BytesIO(JPEG))}})]:
        refused = world.call("carol", method, path, **kwargs)
        assert refused.status_code == 429, refused.text
        assert "job quota" in refused.json()["error"] and refused.headers["Retry-After"].isdigit()
    assert _counts(world) == before
    for path in ("/api/v1/uploads", "/api/v1/datasets"):
        refused = world.call("carol", "POST", path, files={"file": ("big.zip", io.BytesIO(b"\0" * (2 * MB)))})
        assert refused.status_code == 507 and "storage quota" in refused.json()["error"], refused.text
    assert _counts(world) == before
    assert not list((Path(world.env["GRAFT_ARTIFACTS_DIR"]) / "datasets" / ".staging").glob("*/*"))
    small = world.call("carol", "POST", "/api/v1/uploads", files={"file": ("s.jpg", io.BytesIO(JPEG))})
    assert small.status_code == 201, small.text  # under the quota
    with Client(world.url, world.tokens["carol"]) as client, pytest.raises(QuotaExceeded, match="job quota"):
        client.train(data)  # the client's own error for both quotas
    assert world.call("carol", "POST", f"/api/v1/jobs/{first.json()['id']}/cancel").status_code == 200
    assert world.call("carol", "POST", "/api/v1/jobs/train", json={"data_dir": data}).status_code == 202


class _Untouchable(io.BytesIO):
    """A request body that must not be read (werkzeug may ask where it is, but not for its bytes)."""

    def _refuse(self, *_args: Any) -> bytes:  # noqa: ANN401
        raise AssertionError("the body was read")

    read = read1 = readinto = readline = readlines = _refuse


def test_an_over_quota_upload_is_refused_before_its_body_is_read(world: World) -> None:
    client = api_client(world.env)
    headers = {"Authorization": f"Bearer {world.tokens['carol']}"}
    for path in ("/api/v1/uploads", "/api/v1/datasets", f"/api/v1/models/{world.ids['alice']['model']}/predict"):
        response = client.post(path, input_stream=_Untouchable(), headers=headers,
                               content_type="multipart/form-data; boundary=x",
                               environ_overrides={"CONTENT_LENGTH": str(5 * MB)})  # a 5 MB body is announced
        # the storage check runs before any view, so even a predict on a model carol may not see is a 507
        assert response.status_code == 507, response.get_data(as_text=True)
