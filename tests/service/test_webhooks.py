"""Webhooks end to end: a real worker POSTs a finished job to a real local receiver, which verifies it; retries."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from graft.cli.sampledata import make_shapes_dataset
from graft.shared.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.helpers import WEBHOOK_SECRET, Receiver, wait_for_job

TINY = {"backbone": "resnet18", "pretrained": False, "image_size": 64, "epochs": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def shapes(data_root: Path) -> Path:
    """A small three-class dataset."""
    return make_shapes_dataset(data_root / "webhook-shapes", per_class=6, size=72)


def _wait_delivered(client, job_id: str, timeout: float = 30) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").get_json()
        if job["callback"]["state"] in ("delivered", "failed"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"callback of job {job_id} not delivered after {timeout}s: {job['callback']}")


@pytest.mark.both_databases
def test_webhook_is_received_verified_and_retried(client, worker, shapes: Path) -> None:  # noqa: ANN001
    with Receiver([500]) as receiver:  # the first POST fails, so the worker must retry
        url = f"{receiver.url}/hooks/graft?source=test"
        response = client.post("/api/v1/jobs/train", json={"data_dir": str(shapes), **TINY, "callback_url": url})
        assert response.status_code == 202, response.get_json()
        assert response.get_json()["callback"]["state"] == "waiting"
        job = wait_for_job(client, response.get_json()["id"], timeout=120)
        assert job["status"] == "succeeded", job["error"]
        job = _wait_delivered(client, job["id"])

    assert job["callback"]["state"] == "delivered" and job["callback"]["url"] == url
    assert [(a["attempt"], a["status"], a["error"]) for a in job["callback"]["attempts"]] == [
        (1, 500, "HTTP 500"), (2, 200, None)]
    assert len(receiver.received) == 2
    bodies = []
    for headers, body in receiver.received:
        assert verify(WEBHOOK_SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert not verify("another secret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        bodies.append(json.loads(body))
    assert receiver.received[0][0][DELIVERY_HEADER] == receiver.received[1][0][DELIVERY_HEADER]
    assert bodies[0] == bodies[1]  # every attempt sends the same job JSON
    assert bodies[1]["id"] == job["id"] and bodies[1]["status"] == "succeeded"
    assert bodies[1]["model_id"] == job["model_id"] and bodies[1]["params"]["callback_url"] == url


@pytest.mark.parametrize("url", [
    "http://10.0.0.1/x", "http://[::ffff:169.254.169.254]/", "http://example.com/", "gopher://127.0.0.1/x",
])
def test_callback_outside_the_allow_list_is_refused(client, shapes: Path, url: str) -> None:  # noqa: ANN001
    # Refused at submission, before any job exists: only the name is resolved, nothing is sent to it.
    before = len(client.get("/api/v1/jobs?limit=100").get_json()["items"])
    response = client.post("/api/v1/jobs/train", json={"data_dir": str(shapes), **TINY, "callback_url": url})
    assert response.status_code == 400 and response.get_json()["field"] == "callback_url", response.get_json()
    response = client.post("/api/v1/jobs/predict", json={"model_id": "any", "input_dir": str(shapes),
                                                         "callback_url": url})
    assert response.status_code == 400 and response.get_json()["field"] == "callback_url", response.get_json()
    assert len(client.get("/api/v1/jobs?limit=100").get_json()["items"]) == before
