"""Storage quotas and entry limits hold for what an upload unpacks to and for bodies with no Content-Length, and the
synchronous predict endpoint refuses before it reads a body: each attack against a real `graft api` (Hypercorn, real
Redis and database, no worker), which must refuse it with a JSON problem and keep nothing (no file, no row).

Users: small may store 2 MB; free has no quota; busy may have 1 active job and has one. The server allows
GRAFT_ARCHIVE_MAX_MEMBERS=1000 files and folders per request.
"""
from __future__ import annotations

import json
import os
import select
import socket
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import func, select as sql_select

from graft.shared import lifecycle, users
from graft.shared.db import session_scope
from graft.shared.files import stored_cost
from graft.shared.models import DatasetRecord, TrainedModel, Upload, new_id
from graft.shared.schema import upgrade
from tests.archives import zip_bytes
from tests.helpers import TOKEN, api_process, model_file, private_env, serving_pids

MB = 1 << 20
BLOCK = 64 * 1024
EARLY = 32 * MB  # the most a client may have sent when a refusal reaches it (loopback buffers hold a few MB)
BOUNDARY = "graftlimits"
MAX_ENTRIES = 1000


@dataclass
class World:
    """The running API and what it was seeded with."""

    url: str
    env: dict[str, str]
    base: Path
    proc: object
    tokens: dict[str, str]
    user_ids: dict[str, str]
    models: dict[str, str]  # by owner
    upload: str  # small's upload, made through the API

    def post(self, who: str, path: str, **kwargs: object) -> requests.Response:
        """A POST with who's token (TOKEN, an admin without quota, for "admin")."""
        return requests.post(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.tokens[who]}"},
                             timeout=60, **kwargs)

    def stored(self) -> tuple[list[str], int, int]:
        """(files under the artifacts folder but models and TMPDIR, small's upload bytes, datasets rows)."""
        files = sorted(str(p.relative_to(self.base)) for folder in (self.base / "artifacts", self.base / "tmp")
                       for p in folder.rglob("*") if p.is_file() and "models" not in p.parts)
        with session_scope(self.env["GRAFT_DATABASE_URL"]) as session:
            upload_bytes = session.scalar(sql_select(func.sum(Upload.size_bytes))
                                          .where(Upload.owner_id == self.user_ids["small"]))
            datasets = session.scalar(sql_select(func.count()).select_from(DatasetRecord))
        return files, int(upload_bytes or 0), datasets

    def folders(self) -> int:
        """Folders under the artifacts uploads and datasets (empty ones too: an attack may make only those), but
        datasets/.staging, made once on first use."""
        staging = self.base / "artifacts" / "datasets" / ".staging"
        return sum(1 for name in ("uploads", "datasets") for p in (self.base / "artifacts" / name).rglob("*")
                   if p.is_dir() and p != staging)


def _seed_model(env: dict[str, str], session, owner_id: str) -> str:  # noqa: ANN001
    model_id = new_id()
    path = model_file(Path(env["GRAFT_ARTIFACTS_DIR"]), model_id)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"never loaded: no worker runs")
    job = lifecycle.create_job(session, "train", {"data_dir": env["GRAFT_DATA_ROOTS"].split(":")[0]}, owner_id)
    job.status = lifecycle.SUCCEEDED
    session.add(TrainedModel(id=model_id, job_id=job.id, backbone="resnet18", classes=["a", "b"], image_size=64,
                             metrics={}, path=str(path), owner_id=owner_id))
    return model_id


@pytest.fixture(scope="module")
def world(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("limits")
    (base / "tmp").mkdir()
    env = private_env(service_env, base, "graft-limits", GRAFT_ARTIFACTS_DIR=str(base / "artifacts"),
                      TMPDIR=str(base / "tmp"), GRAFT_MIN_FREE_MB="0", GRAFT_SYNC_PREDICT_WAIT_SECONDS="1",
                      GRAFT_ARCHIVE_MAX_MEMBERS=str(MAX_ENTRIES))
    upgrade(env["GRAFT_DATABASE_URL"])
    tokens, user_ids, models = {"admin": TOKEN}, {}, {}
    with session_scope(env["GRAFT_DATABASE_URL"]) as session:
        for name, jobs, storage in (("small", None, 2), ("free", None, None), ("busy", 1, None)):
            user = users.add_user(session, name, max_jobs=jobs, max_storage_mb=storage)
            tokens[name], user_ids[name] = users.create_token(session, user)[1], user.id
            models[name] = _seed_model(env, session, user.id)
        lifecycle.create_job(session, "train", {"data_dir": "/x"}, user_ids["busy"])  # busy's one active job
    with api_process(env) as (url, proc):
        world = World(url, env, base, proc, tokens, user_ids, models, "")
        made = world.post("small", "/api/v1/uploads", files={"file": ("first.jpg", b"jpeg")})
        assert made.status_code == 201, made.text
        world.upload = made.json()["id"]
        yield world


def _zip(entries: dict[str, bytes]) -> bytes:
    return zip_bytes(entries, zipfile.ZIP_DEFLATED)


def _bomb() -> bytes:
    """A 0.9 MB zip of 80 members of 1 MB, each expanding about 85 times: under GRAFT_ARCHIVE_MAX_RATIO (100),
    80 MB unpacked."""
    member = os.urandom(11_500) + bytes(MB - 11_500)
    return _zip({"a/x.png": b"png", **{f"b/{i}.bin": member for i in range(80)}})


def _folders(count: int, levels: int) -> bytes:
    """count empty folder entries, each levels deep under its own root: count x levels folders on disk, 0 bytes
    (and one small file, so that a dataset is not refused as empty first)."""
    return _zip({"a/x.png": b"png", **{f"r{i}/" + "d/" * (levels - 1): b"" for i in range(count)}})


ZIPS = {"bomb": _bomb(), "deep": _folders(100, 300), "wide": _folders(30, 30), "wider": _folders(100, 30)}


def _send(world: World, who: str, path: str, zip_name: str, endpoint_fields: dict[str, str]) -> requests.Response:
    fields = {**endpoint_fields}
    if "{model}" in fields.get("model_id", ""):
        fields["model_id"] = world.models.get(who, world.models["small"])  # an admin may use anyone's
    return world.post(who, path.replace("{upload}", world.upload), data=fields,
                      files={"file": (f"{zip_name}.zip", ZIPS[zip_name])})


# Every endpoint that unpacks an uploaded zip: (path, form fields).
UNPACKING = [("/api/v1/uploads", {}), ("/api/v1/uploads/{upload}", {}), ("/api/v1/datasets", {}),
             ("/api/v1/jobs/predict", {"model_id": "{model}"})]
# (zip, who, status, the problem's code or a word of its message)
ATTACKS = [
    ("bomb", "small", 507, "storage quota"),  # 80 MB unpacked past a 2 MB quota
    ("deep", "small", 400, "too_deep"),  # 300 levels: refused whoever sends it
    ("deep", "admin", 400, "too_deep"),
    ("wide", "small", 507, "storage quota"),  # 900 empty folders, 0 bytes: 3.6 MB counted at 4 KiB each
    ("wider", "admin", 400, "too_many_members"),  # no quota, but 3,000 folders: more entries than MAX_ENTRIES
]
CASES = [(path, fields, *attack) for path, fields in UNPACKING for attack in ATTACKS
         if not (attack[1] == "admin" and "{upload}" in path)]  # small's upload is small's alone


@pytest.mark.parametrize(("path", "fields", "zip_name", "who", "status", "says"), CASES,
                         ids=[f"{c[2]}-{c[3]}-{c[0]}" for c in CASES])
def test_what_a_zip_unpacks_to_is_counted_before_it_is_written(world: World, path: str, fields: dict[str, str],
                                                               zip_name: str, who: str, status: int,
                                                               says: str) -> None:
    before, folders = world.stored(), world.folders()
    response = _send(world, who, path, zip_name, fields)
    assert response.status_code == status, response.text[:500]
    problem = response.json()
    assert response.headers["Content-Type"] == "application/problem+json"
    assert says in (problem.get("code") or problem["error"]), problem
    assert world.stored() == before and world.folders() == folders  # no file, folder or row of it stays


def test_empty_files_in_deep_folders_count_against_the_quota(world: World) -> None:
    """20 loose files of 0 bytes, 31 folders deep each: 640 files and folders, 2.5 MB counted at 4 KiB each."""
    before, folders = world.stored(), world.folders()
    parts = [("file", (f"{i}/" + "d/" * 30 + "x.jpg", b"")) for i in range(20)]
    response = world.post("small", "/api/v1/uploads", files=parts)
    assert response.status_code == 507 and "storage quota" in response.json()["error"], response.text
    assert world.stored() == before and world.folders() == folders


def test_an_accepted_zip_counts_its_bytes_and_entries(world: World) -> None:
    response = world.post("small", "/api/v1/uploads", files={"file": ("ok.zip", _zip({"a/1.jpg": b"x" * 10,
                                                                                     "a/2.jpg": b"y" * 10}))})
    assert response.status_code == 201 and response.json()["added"] == 2, response.text
    with session_scope(world.env["GRAFT_DATABASE_URL"]) as session:
        assert session.get(Upload, response.json()["id"]).size_bytes == stored_cost(20, 3)  # a/, a/1.jpg, a/2.jpg


def _answer(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the server closed the connection without an answer: {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in head.decode().split("\r\n")[1:])}
    while len(rest) < int(fields["content-length"]):
        rest += sock.recv(65536)
    return int(head.split()[1]), json.loads(rest)


PART = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n").encode()  # a file part's header: its bytes follow
TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def _head(world: World, who: str, path: str, length: int | None) -> tuple[socket.socket, bytes]:
    """A connection to the server, and a multipart request's head and PART (Content-Length: length, or chunked
    when None)."""
    parts = urlsplit(world.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}",
             f"Authorization: Bearer {world.tokens[who]}",
             f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
             f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"]
    first = PART if length is not None else f"{len(PART):x}\r\n".encode() + PART + b"\r\n"
    return sock, ("\r\n".join(lines) + "\r\n\r\n").encode() + first


# (who, model: whose, or None for an id nobody has, status, a word of the message)
EARLY_REFUSALS = [("free", "busy", 404, "no model"), ("free", None, 404, "no model"),
                  ("busy", "busy", 429, "job quota"), ("small", "small", 507, "storage quota")]


@pytest.mark.parametrize(("who", "owner", "status", "says"), EARLY_REFUSALS,
                         ids=["another-users-model", "unknown-model", "over-job-quota", "over-storage-quota"])
def test_predict_now_refuses_before_it_reads_the_body(world: World, who: str, owner: str | None, status: int,
                                                      says: str) -> None:
    """Content-Length says 60 MB, 64 KB of it is sent, then nothing: the answer must come from what was sent."""
    model = world.models[owner] if owner else new_id()
    before = world.stored()
    sock, head = _head(world, who, f"/api/v1/models/{model}/predict", 60 * MB)
    with sock:
        sock.sendall(head + bytes(BLOCK))
        sock.settimeout(5)  # a server that waits for the other 59.9 MB never answers
        answer, problem = _answer(sock)
    assert answer == status and says in problem["error"], problem
    assert world.stored() == before


@pytest.mark.parametrize("path", ["/api/v1/uploads", "/api/v1/datasets", "/api/v1/jobs/predict",
                                  "/api/v1/models/{model}/predict"])
def test_a_chunked_body_is_cut_off_at_the_quota(world: World, path: str) -> None:
    """No Content-Length to check first: small's 2 MB quota stops a 256 MB chunked body as it streams."""
    before = world.stored()
    sock, head = _head(world, "small", path.replace("{model}", world.models["small"]), None)
    chunk = f"{BLOCK:x}\r\n".encode() + bytes(BLOCK) + b"\r\n"
    sent = 0
    with sock:
        sock.sendall(head)
        sock.setblocking(False)
        while sent < 256 * MB:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(chunk)
                except BlockingIOError:
                    continue
        sock.setblocking(True)
        sock.settimeout(10)
        status, problem = _answer(sock)
    assert status == 507 and "storage quota" in problem["error"], problem
    assert sent < 2 * MB + EARLY, f"refused after {sent / MB:.1f} MB"
    assert world.stored() == before


def _unnamed_files(pid: int) -> list[str]:
    """What the process's open unnamed (deleted) files were made in."""
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.endswith("(deleted)"):
            targets.append(target)
    return targets


def test_predict_now_spools_on_the_artifacts_disk(world: World) -> None:
    """Half-way through a 2 MB image, the serving process holds its spooled part under the artifacts folder
    (the disk the free-space check watches), not in TMPDIR."""
    body = bytes(2 * MB)
    sock, head = _head(world, "free", f"/api/v1/models/{world.models['free']}/predict",
                       len(PART) + len(body) + len(TAIL))
    with sock:
        sock.sendall(head + body[:MB])
        spooled: list[str] = []
        deadline = time.monotonic() + 10
        while not spooled and time.monotonic() < deadline:
            time.sleep(0.1)
            spooled = [target for pid in serving_pids(world.proc) for target in _unnamed_files(pid)  # type: ignore[arg-type]
                       if target.startswith(str(world.base))]
        sock.sendall(body[MB:] + TAIL)
        status, answer = _answer(sock)
    assert spooled and all(p.startswith(str(world.base / "artifacts" / "spool")) for p in spooled), spooled
    assert status == 202, answer  # no worker: the job is queued past GRAFT_SYNC_PREDICT_WAIT_SECONDS
