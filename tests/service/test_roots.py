"""Through the service: a training job and a dataset inspection never read what a symlink leads out of the roots."""
from __future__ import annotations

from pathlib import Path

from graft.cli.sampledata import make_shapes_dataset
from tests.helpers import wait_for_dataset, wait_for_job

TINY = {"backbone": "resnet18", "pretrained": False, "image_size": 32, "epochs": 1, "batch_size": 8}


def test_links_out_of_the_roots_are_skipped_and_reported(client, worker, data_root: Path,  # noqa: ANN001
                                                        tmp_path: Path) -> None:
    secret = make_shapes_dataset(tmp_path / "secret", per_class=2, size=32, classes=("loot",), seed=5)  # no root
    data = make_shapes_dataset(data_root / "linked", per_class=5, size=32, classes=("circles", "squares"))
    (data / "circles" / "stolen.jpg").symlink_to(sorted((secret / "loot").glob("*.jpg"))[0])
    (data / "loot").symlink_to(secret / "loot")

    job = wait_for_job(client, client.post("/api/v1/jobs/train", json={"data_dir": str(data), **TINY}).get_json()["id"])
    assert job["status"] == "succeeded", job["error"]
    skipped = {s["path"]: s["reason"] for s in job["metrics"]["skipped_files"]}
    assert set(skipped) == {"circles/stolen.jpg", "loot/"} and all("outside the data roots" in r for r in skipped.values())
    model = client.get(f"/api/v1/models/{job['model_id']}").get_json()
    assert model["classes"] == ["circles", "squares"]

    answer = client.post("/api/v1/datasets", json={"path": str(data), "name": "linked"})
    assert answer.status_code == 202, answer.get_json()
    dataset = wait_for_dataset(client, answer.get_json()["id"])
    issue = next(i for i in dataset["issues"] if i["code"] == "outside_roots")
    assert sorted(issue["files"]) == ["circles/stolen.jpg", "loot/"] and set(dataset["classes"]) == {"circles", "squares"}
