"""The API's memory: a real `graft api` (Hypercorn, one worker process; SQLite, Redis) after serving every kind of
request. The figures are the worker's, the process that runs the app (the master only watches it).

    .venv/bin/python bench/api_rss.py [--requests 200]

Prints the API process's RSS and peak RSS (VmHWM) after start-up and after a round of requests on every endpoint
family, whether any torch, OpenCV or OpenVINO library is mapped into it, and, for scale, the RSS of a bare Python
that imports torch. Target (issue 9): under 200 MB. Needs Redis at GRAFT_REDIS_URL (default redis://127.0.0.1:6379/0).
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import requests

TOKEN = "bench-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) of pid in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _worker(master: int) -> int:
    """The worker process of `graft api` (its spawned child that is not the resource tracker)."""
    for _ in range(100):
        children = [pid for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()
                    if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise RuntimeError("graft api has no worker process")


def _ml_libraries(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    libs = {line.split()[-1] for line in maps if ".so" in line}
    return sorted(lib for lib in libs if any(k in lib for k in ("torch", "cv2", "opencv", "openvino")))


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in ("a/1.png", "a/2.png", "b/1.png", "b/2.png"):
            archive.writestr(name, b"not really a png")
    return out.getvalue()


def _round(url: str, data_dir: Path) -> None:
    """One request to each endpoint family (answers may be 4xx: the code paths and imports are what count)."""
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {TOKEN}"
    s.get(f"{url}/healthz", timeout=10)
    job = s.post(f"{url}/api/v1/jobs/train", json={"data_dir": str(data_dir), "pretrained": False}, timeout=10).json()
    for path in ("/api/v1/jobs", f"/api/v1/jobs/{job['id']}", f"/api/v1/jobs/{job['id']}/events",
                 f"/api/v1/jobs/{job['id']}/results", "/api/v1/models", "/api/v1/models/none", "/api/v1/datasets"):
        s.get(f"{url}{path}", timeout=10)
    s.post(f"{url}/api/v1/jobs/{job['id']}/cancel", timeout=10)
    upload = s.post(f"{url}/api/v1/uploads", files=[("file", ("x.jpg", b"x"))], timeout=10).json()
    s.post(f"{url}/api/v1/jobs/predict", json={"model_id": "none", "upload_id": upload["id"]}, timeout=10)
    s.post(f"{url}/api/v1/models/none/predict", files=[("file", ("z.jpg", b"z"))], timeout=10)
    dataset = s.post(f"{url}/api/v1/datasets", files=[("file", ("set.zip", _zip()))], timeout=30).json()
    s.delete(f"{url}/api/v1/datasets/{dataset['id']}", timeout=10)


def main() -> int:
    """Start `graft api`, measure, serve, measure again, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="rounds of requests over every endpoint family")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graft-api-rss-") as tmp:
        base = Path(tmp)
        (base / "data").mkdir()
        env = {**os.environ, "GRAFT_VAR_DIR": str(base), "GRAFT_DATA_ROOTS": str(base / "data"),
               "GRAFT_API_TOKENS": TOKEN, "GRAFT_QUEUE": f"graft-bench-{uuid.uuid4().hex[:6]}",
               "GRAFT_DB_AUTO_UPGRADE": "1"}  # a throw-away database: the API makes its tables at start
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "graft.cli.main", "api", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    requests.get(f"{url}/healthz", timeout=1)
                    break
                except requests.ConnectionError:
                    time.sleep(0.1)
            worker = _worker(proc.pid)
            started = _memory(worker)
            t0 = time.monotonic()
            for _ in range(args.requests):
                _round(url, base / "data")
            elapsed = time.monotonic() - t0
            served = _memory(worker)
            libs = _ml_libraries(worker) + _ml_libraries(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
    torch_rss = subprocess.run([sys.executable, "-c", "import torch, resource; "
                                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
                               capture_output=True, text=True, check=True).stdout.strip()
    print(f"graft api after start-up:        RSS {started[0]:7.1f} MB   peak {started[1]:7.1f} MB")
    print(f"after {args.requests} rounds ({args.requests * 16} requests, {elapsed:.1f} s): "
          f"RSS {served[0]:7.1f} MB   peak {served[1]:7.1f} MB")
    print(f"ML libraries mapped in the API:  {libs or 'none'}")
    print(f"for scale, python -c 'import torch': peak {float(torch_rss):7.1f} MB")
    print(f"target: under 200 MB -> {'met' if served[1] < 200 and not libs else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
