"""graft.client against a real `graft api` process and a real worker: train, wait, page, predict, datasets."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterator

import pytest

from graft.cli.sampledata import make_shapes_dataset
from graft.client import AuthError, Client, NotFound
from tests.helpers import TOKEN, api_process

TINY = {"backbone": "resnet18", "pretrained": False, "image_size": 64, "epochs": 1, "batch_size": 8}
CLASSES = ("circles", "squares")


@pytest.fixture(scope="module")
def api(service_env: dict[str, str]) -> Iterator[Client]:
    """A Client on `graft api` running as a real process."""
    with api_process(service_env) as (url, _proc), Client(url, TOKEN) as client:
        yield client


@pytest.mark.both_databases
def test_train_wait_page_predict_and_errors(api: Client, worker, data_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    health = api.health()
    assert {k: health[k] for k in ("status", "database", "redis")} == {"status": "ok", "database": True, "redis": True}
    data = make_shapes_dataset(data_root / "client-shapes", per_class=8, size=64, classes=CLASSES)
    first, second = api.train(str(data), **TINY), api.train(str(data), **{**TINY, "seed": 1})
    assert first["status"] == "queued"
    updates: list[dict] = []
    job = api.wait(first["id"], on_progress=updates.append, interval=0.3, timeout=240)
    assert job["status"] == "succeeded", job["error"]
    assert updates and updates[-1]["status"] == "succeeded"
    assert api.wait(second["id"], interval=0.3, timeout=240)["status"] == "succeeded"
    assert [e["to"] for e in api.events(job["id"])][-1] == "succeeded"

    held = make_shapes_dataset(tmp_path / "held", per_class=2, size=64, seed=5, classes=CLASSES)
    sent: list[tuple[int, int]] = []
    predict = api.predict_folder(job["model_id"], held, on_progress=lambda done, total: sent.append((done, total)))
    assert sent[-1] == (4, 4)
    predict = api.wait(predict["id"], interval=0.3, timeout=120)
    assert predict["status"] == "succeeded", predict["error"]
    rows = list(api.results(predict["id"], page_size=1))  # one row a page: the iterator follows "next"
    assert [r["path"] for r in rows] == sorted(p.relative_to(held).as_posix() for p in held.rglob("*.jpg"))
    buffer = io.BytesIO()
    api.results_csv(predict["id"], buffer)
    assert len(list(csv.reader(io.StringIO(buffer.getvalue().decode())))) == 1 + len(rows)
    now = api.predict_now(job["model_id"], sorted(held.rglob("*.jpg"))[:2], reject_ood=False)
    assert len(now["items"]) == 2 and now["items"][0]["label"] in CLASSES

    jobs = list(api.jobs(page_size=1))  # at least three jobs, one a page
    assert {first["id"], second["id"], predict["id"]} <= {j["id"] for j in jobs}
    assert [j["id"] for j in api.jobs(kind="predict", page_size=1)].count(predict["id"]) == 1
    models = list(api.models(page_size=1))
    assert {job["model_id"], api.job(second["id"])["model_id"]} <= {m["id"] for m in models}
    assert api.model(job["model_id"])["classes"] == list(CLASSES)

    with pytest.raises(NotFound, match="HTTP 404") as caught:
        api.job("no-such-job")
    assert caught.value.status == 404 and "no-such-job" in caught.value.body["error"]
    with Client(api.url, "wrong-token") as stranger, pytest.raises(AuthError):
        stranger.job(job["id"])


def test_add_a_dataset_folder_with_progress(api: Client, worker, tmp_path: Path) -> None:  # noqa: ANN001
    folder = make_shapes_dataset(tmp_path / "set", per_class=3, size=40, classes=CLASSES)
    (folder / ".DS_Store").write_bytes(b"junk")
    progress: list[tuple[str, int, int]] = []
    dataset = api.add_dataset(folder, "client set", on_progress=lambda *p: progress.append(p), timeout=120)
    assert dataset["status"] == "ready" and dataset["name"] == "client set"
    assert dataset["classes"] == {"circles": 3, "squares": 3}
    assert ("zipping", 6, 6) in progress
    phase, done, total = progress[-1]
    assert phase == "uploading" and done == total > 0
    assert dataset["id"] in {d["id"] for d in api.datasets(page_size=1)}
    assert api.delete_dataset(dataset["id"]) == {"id": dataset["id"], "deleted": True}
    with pytest.raises(NotFound):
        api.dataset(dataset["id"])
