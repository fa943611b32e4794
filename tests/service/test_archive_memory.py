"""Bounded memory on any archive: each crafted archive, uploaded to a real `graft api` process (Hypercorn, real
Redis and SQLite) as a dataset and as predict files, is refused with its 4xx problem, and the serving process's
peak memory (VmHWM, which only grows) grows by less than 64 MB over all of them."""
from __future__ import annotations

import zipfile
from typing import Callable

import pytest
import requests

from graft.shared.db import session_scope
from graft.shared.lifecycle import create_job
from graft.shared.models import TrainedModel, new_id
from tests.archives import MB, STRUCTURE_CASES, good, image, tar_bytes, zip_bytes
from tests.helpers import TOKEN, api_process, peak_rss_kb, private_env, serving_pids

GROWTH_LIMIT_KB = 64 * 1024
LIMITS = {"GRAFT_MAX_UPLOAD_MB": "16", "GRAFT_ARCHIVE_MAX_MEMBERS": "50", "GRAFT_ARCHIVE_MAX_BYTES": str(4 * MB),
          "GRAFT_ARCHIVE_MAX_RATIO": "100"}

# (id, builder returning (body, file name), error code): the structure cases at a size that shows (a 128 MB
# header from 130 KB of gzip, a zip declaring 1 entry and holding 65,000), then the limits every upload path applies.
CRAFTED: list[tuple[str, Callable[[], tuple[bytes, str]], str]] = [
    *((case_id, (lambda build=build: build(128)), code) for case_id, build, code in STRUCTURE_CASES),
    ("zip-bomb", lambda: (zip_bytes({**good(), "cats/b.png": b"\0" * 3 * MB}, zipfile.ZIP_DEFLATED), "a.zip"), "ratio"),
    ("too-many-members", lambda: (zip_bytes({f"c{i % 2}/{i}.png": b"x" for i in range(60)}), "a.zip"),
     "too_many_members"),
    ("too-big-in-total", lambda: (zip_bytes({f"cats/{i}.png": image(i, size=900) for i in range(6)}), "a.zip"),
     "too_large"),
]
TAR_ONLY = {"huge-pax-header", "huge-long-name", "header-chain", "sparse-member"}  # predict uploads unpack zips only


@pytest.fixture(scope="module")
def server(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A real `graft api` with small archive limits and a model row to predict with; yields (URL, worker pid, model)."""
    base = tmp_path_factory.mktemp("archive-memory")
    env = private_env(service_env, base, "graft-archmem", GRAFT_ARTIFACTS_DIR=str(base / "artifacts"),
                      GRAFT_MIN_FREE_MB="0", **LIMITS)
    with api_process(env) as (url, proc):
        with session_scope(env["GRAFT_DATABASE_URL"]) as session:
            owner = create_job(session, "train", {"data_dir": "/nowhere"})
            model = TrainedModel(id=new_id(), job_id=owner.id, backbone="resnet18", classes=["a", "b"],
                                 image_size=64, metrics={}, path=str(base / "model.pt"))
            session.add(model)
            model_id = model.id
        (pid,) = serving_pids(proc)
        yield url, pid, model_id


def _post(url: str, path: str, body: bytes, filename: str, data: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{url}{path}", headers={"Authorization": f"Bearer {TOKEN}"}, data=data or {},
                         files={"file": (filename, body)}, timeout=120)


def test_crafted_archives_are_refused_in_bounded_memory(server: tuple[str, int, str]) -> None:
    url, pid, model_id = server
    built = [(case_id, *build(), code) for case_id, build, code in CRAFTED]
    # Warm up every path with a good archive first: what the first request imports is not the archives' doing.
    ok = zip_bytes(good())
    assert _post(url, "/api/v1/datasets", ok, "ok.zip").status_code == 202
    assert _post(url, "/api/v1/uploads", ok, "ok.zip").status_code == 201
    assert _post(url, "/api/v1/datasets", tar_bytes(good()), "ok.tgz").status_code == 202
    start = peak = peak_rss_kb(pid)
    growth = {}
    for case_id, body, filename, code in built:
        paths = [("/api/v1/datasets", None)]
        if case_id not in TAR_ONLY:
            paths += [("/api/v1/uploads", None), ("/api/v1/jobs/predict", {"model_id": model_id})]
        for path, data in paths:
            response = _post(url, path, body, filename, data)
            assert response.status_code == 400, (case_id, path, response.text)
            problem = response.json()
            assert problem["field"] == "file" and problem["code"] == code, (case_id, path, problem)
            growth[f"{case_id} {path}"] = peak_rss_kb(pid) - peak
            peak = peak_rss_kb(pid)
    print(f"peak memory of the API worker: {start / 1024:.0f} MB before, {peak / 1024:.0f} MB after; growth per "
          f"upload (MB): { {k: round(v / 1024, 1) for k, v in growth.items() if v} }")
    assert peak - start < GROWTH_LIMIT_KB, growth
