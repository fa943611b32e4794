"""Real-data accuracy: EfficientNet-Lite0 trained through the service on ants/bees, then its val split classified."""
from __future__ import annotations

import pytest

from tests.helpers import HYMENOPTERA, wait_for_job

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason=f"hymenoptera dataset not found at {HYMENOPTERA}")
def test_hymenoptera_accuracy_through_the_service(client, worker) -> None:  # noqa: ANN001
    # refit false: the model must not train on val/, which this test then classifies to compare with the report.
    body = {"data_dir": str(HYMENOPTERA.resolve()), "backbone": "efficientnet_lite0", "refit": False}
    response = client.post("/api/v1/jobs/train", json=body)
    assert response.status_code == 202, response.get_json()
    job = wait_for_job(client, response.get_json()["id"], timeout=600)
    assert job["status"] == "succeeded", job["error"]
    metrics = job["metrics"]
    assert metrics["train_images"] == 245 and metrics["val_images"] == 153  # the folder's own train/ and val/
    assert metrics["best_val_acc"] >= 0.93, metrics["history"]
    model = client.get(f"/api/v1/models/{job['model_id']}").get_json()
    assert model["metrics"]["val_acc"] == pytest.approx(metrics["val_acc"], abs=1e-4)
    assert model["metrics"]["estimate"] == "holdout" and model["metrics"]["refit"] is False

    # The kept model, run by a batch predict job over val/, scores what training reported (one image of slack:
    # the predict runtime is OpenVINO, training measured with torch). reject_ood off: an odd photo among the
    # ants and bees would otherwise be `unknown` (tests/service/test_trust_accuracy.py measures that).
    response = client.post("/api/v1/jobs/predict", json={"model_id": model["id"], "input_dir": str(HYMENOPTERA / "val"),
                                                      "reject_ood": False})
    assert response.status_code == 202, response.get_json()
    predicted = wait_for_job(client, response.get_json()["id"], timeout=300)
    assert predicted["status"] == "succeeded", predicted["error"]
    rows, url = [], f"/api/v1/jobs/{predicted['id']}/results?limit=1000"
    while url:
        page = client.get(url).get_json()
        rows, url = rows + [r for r in page["items"] if r["error"] is None], page["next"]
    correct = sum(r["label"] == r["path"].split("/")[0] for r in rows)
    reported = round(model["metrics"]["val_acc"] * metrics["val_images"])
    assert abs(correct - reported) <= 1, (correct, reported, len(rows))
