"""Real-data accuracy: EfficientNet-Lite0 trained through the service on ants/bees."""
from __future__ import annotations

import pytest

from tests.helpers import HYMENOPTERA, wait_for_job

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason=f"hymenoptera dataset not found at {HYMENOPTERA}")
def test_hymenoptera_accuracy_through_the_service(client, worker) -> None:  # noqa: ANN001
    body = {"data_dir": str(HYMENOPTERA.resolve()), "backbone": "efficientnet_lite0"}
    response = client.post("/api/v1/jobs/train", json=body)
    assert response.status_code == 202, response.get_json()
    job = wait_for_job(client, response.get_json()["id"], timeout=600)
    assert job["status"] == "succeeded", job["error"]
    metrics = job["metrics"]
    assert metrics["train_images"] == 245 and metrics["val_images"] == 153  # the folder's own train/ and val/
    assert metrics["best_val_acc"] >= 0.93, metrics["history"]
    model = client.get(f"/api/v1/models/{job['model_id']}").get_json()
    assert model["metrics"]["val_acc"] == pytest.approx(metrics["best_val_acc"], abs=1e-4)
