"""The API process stays torch-free: every endpoint served once, then no ML module (or the worker) is loaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import requests

from tests.helpers import ROOT, TOKEN, api_process, serving_pids

FORBIDDEN = ("torch", "torchvision", "openvino", "cv2", "PIL", "numpy", "graft.worker")

# Runs in a fresh interpreter: the test process itself has loaded torch long ago.
SCRIPT = r'''
import io, json, sys, zipfile
from graft.api import create_app
from graft.shared.config import get_config
from graft.shared.db import session_scope
from graft.shared.lifecycle import create_job
from graft.shared.models import TrainedModel, new_id

config = get_config()
app = create_app(config)
client = app.test_client()
client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + sys.argv[1]
model_file = config.artifacts_dir / "fake-model.pt"
model_file.parent.mkdir(parents=True, exist_ok=True)
model_file.write_bytes(b"never loaded by the API")
with session_scope(config.database_url) as session:
    owner = create_job(session, "train", {"data_dir": "/nowhere"})
    model = TrainedModel(id=new_id(), job_id=owner.id, backbone="resnet18", classes=["a", "b"], image_size=64,
                         metrics={}, path=str(model_file))
    session.add(model)
    model_id = model.id

def zipped():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in ("a/1.png", "a/2.png", "b/1.png", "b/2.png"):
            archive.writestr(name, b"\x89PNG not really")
    out.seek(0)
    return out

served = {}
def hit(method, url, **kwargs):
    response = client.open(url, method=method, **kwargs)
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == request_endpoint(method, url))
    served[(rule.rule, method)] = response.status_code
    return response

def request_endpoint(method, url):
    adapter = app.url_map.bind("localhost")
    return adapter.match(url.split("?")[0], method=method)[0]

data_dir = config.data_roots[0]
hit("GET", "/healthz")
job = hit("POST", "/api/v1/jobs/train", json={"data_dir": str(data_dir), "pretrained": False}).get_json()
hit("GET", "/api/v1/jobs")
hit("GET", f"/api/v1/jobs/{job['id']}")
hit("GET", f"/api/v1/jobs/{job['id']}/events")
hit("GET", f"/api/v1/jobs/{job['id']}/logs")
hit("GET", "/metrics")
hit("POST", f"/api/v1/jobs/{job['id']}/cancel")
hit("GET", f"/api/v1/jobs/{job['id']}/results")
hit("GET", "/api/v1/models")
hit("GET", f"/api/v1/models/{model_id}")
upload = hit("POST", "/api/v1/uploads", data={"file": (io.BytesIO(b"x"), "x.jpg")},
             content_type="multipart/form-data").get_json()
hit("POST", f"/api/v1/uploads/{upload['id']}", data={"file": (io.BytesIO(b"y"), "y.jpg")},
    content_type="multipart/form-data")
hit("POST", "/api/v1/jobs/predict", json={"model_id": model_id, "upload_id": upload["id"]})
hit("POST", f"/api/v1/models/{model_id}/predict", data={"file": (io.BytesIO(b"z"), "z.jpg")},
    content_type="multipart/form-data")
hit("GET", f"/api/v1/models/{model_id}/download?format=onnx")
dataset = hit("POST", "/api/v1/datasets", data={"file": (zipped(), "set.zip")},
              content_type="multipart/form-data").get_json()
hit("GET", "/api/v1/datasets")
hit("GET", f"/api/v1/datasets/{dataset['id']}")
hit("GET", f"/api/v1/datasets/{dataset['id']}/thumbnails/0.jpg")
hit("GET", f"/api/v1/models/{model_id}/predictions")
hit("GET", f"/api/v1/models/{model_id}/predictions/0/thumbnail")
hit("GET", f"/api/v1/jobs/{job['id']}/results/thumbnail?path=x.jpg")
hit("GET", "/").close()  # the dashboard and its files
hit("GET", "/static/js/app.js").close()
hit("DELETE", f"/api/v1/datasets/{dataset['id']}")
hit("DELETE", f"/api/v1/models/{model_id}")
hit("GET", "/api/v1/openapi.json")
hit("GET", "/docs")
hit("GET", "/docs/assets/swagger-ui-bundle.js").close()
rules = {(r.rule, m) for r in app.url_map.iter_rules() if r.endpoint != "static"
         for m in r.methods - {"HEAD", "OPTIONS"}}
print(json.dumps({"served": {f"{m} {r}": s for (r, m), s in served.items()},
                  "missing": sorted(f"{m} {r}" for r, m in rules - set(served)),
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "openvino",
                                   "cv2", "PIL", "numpy") or m.startswith("graft.worker"))}))
'''


def test_serving_every_endpoint_loads_no_ml_module(service_env: dict[str, str]) -> None:
    env = {**os.environ, **service_env, "GRAFT_QUEUE": f"graft-apiproc-{uuid.uuid4().hex[:8]}",
           "GRAFT_SYNC_PREDICT_WAIT_SECONDS": "1"}  # nobody serves these queues: the sync predict answers 202
    done = subprocess.run([sys.executable, "-c", SCRIPT, TOKEN], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["missing"] == []  # every endpoint was served once
    assert all(status < 500 for status in report["served"].values()), report["served"]
    assert report["served"]["POST /api/v1/models/<id:model_id>/predict"] == 202  # through the queue, not in-process
    assert report["served"]["DELETE /api/v1/models/<id:model_id>"] == 409  # the predict job above still uses it
    assert report["served"]["GET /api/v1/models/<id:model_id>/download"] == 202  # exported by a worker, not in-process
    assert report["served"]["POST /api/v1/datasets"] == 202
    assert report["served"]["POST /api/v1/jobs/train"] == 202
    assert report["loaded"] == [], f"the API process loaded {report['loaded']}"


def test_a_running_graft_api_maps_no_ml_library(service_env: dict[str, str]) -> None:
    """The real `graft api` process (Hypercorn serving in it), after serving requests: no torch, OpenCV or
    OpenVINO library is mapped."""
    with api_process(service_env) as (url, proc):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for path in ("/api/v1/jobs", "/api/v1/models", "/api/v1/datasets", "/api/v1/jobs/none/results"):
            assert requests.get(f"{url}{path}", headers=headers, timeout=10).status_code < 500
        pids = {proc.pid, *serving_pids(proc)}
        assert pids == {proc.pid}  # one worker: the app runs in the `graft api` process itself
        maps = "".join(Path(f"/proc/{pid}/maps").read_text() for pid in pids)
        libraries = {line.split()[-1] for line in maps.splitlines() if ".so" in line}
        assert not [lib for lib in libraries if any(name in lib for name in ("torch", "cv2", "opencv", "openvino"))]
        assert any("sqlalchemy" in lib or "_sqlite3" in lib for lib in libraries)  # the reading itself works
