"""Predict throughput: a real predict job (Redis, `graft worker`, SQLite) against a plain single-process torchvision loop.

    .venv/bin/python bench/predict_bench.py [--n 512] [--images DIR] [--backbone resnet18] [--image-size 224]

Prints images/s for the job (end to end, warm model cache), for the worker's core in process, and for the plain loop,
the job/plain ratio, the worker's peak RSS, and the top-1 agreement of the optimised model with the eager fp32 model.
Needs Redis at GRAFT_REDIS_URL (default redis://127.0.0.1:6379/0).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def make_jpegs(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """n photo-like JPEGs (smooth gradients, shapes, noise) of width x height."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(n):
        a, b, c = rng.uniform(0, 1, 3)
        base = np.stack([(xx / width) * 255 * a, (yy / height) * 255 * b, np.full_like(xx, 255 * c)], -1)
        img = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
        for _ in range(3):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            cv2.circle(img, centre, int(rng.integers(10, height // 3)), colour, -1, cv2.LINE_AA)
        path = folder / f"img_{i:05d}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def real_jpegs(source: Path, folder: Path, n: int) -> list[Path]:
    """Copy up to n JPEGs found below source into folder (cycled when there are fewer)."""
    found = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not found:
        sys.exit(f"no JPEGs below {source}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        target = folder / f"img_{i:05d}{found[i % len(found)].suffix}"
        shutil.copy(found[i % len(found)], target)
        paths.append(target)
    return paths


def write_model(folder: Path, backbone: str, image_size: int, classes: list[str]) -> Path:
    """A model artifact with ImageNet weights when they are available here, random ones otherwise."""
    from worker.core.backbones import BACKBONES, WeightsNotFound, build_model
    from worker.core.checkpoint import save_model_artifact
    from worker.core.transforms import Preprocessing

    try:
        model = build_model(backbone, len(classes), pretrained=True)
        weights = "imagenet trunk"
    except WeightsNotFound:
        model = build_model(backbone, len(classes), pretrained=False)
        weights = "random"
    info = BACKBONES[backbone]
    prep = Preprocessing.for_size(image_size, info.mean, info.std)
    meta = {"backbone": backbone, "classes": classes, "image_size": image_size, "preprocessing": prep.to_dict(),
            "metrics": {}, "params": {"bench": True, "weights": weights}}
    print(f"model: {backbone} at {image_size} px, {weights} weights")
    return save_model_artifact(folder, model.eval(), meta)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def peak_rss_mb(pid: int) -> float:
    """Largest VmHWM (peak resident set) among pid and its children, in MiB."""
    peaks = []
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return max(peaks, default=0.0)


def run_job(env: dict[str, str], model_path: Path, folder: Path, n: int, chunk_size: int, workers: int,
            precisions: list[str]) -> tuple[dict[str, float], float]:
    """images/s of one predict job per precision (each after a warm-up job), and the workers' peak RSS (MiB)."""
    from api import create_app
    from shared import jobs as sm
    from shared.config import Config
    from shared.db import session_scope
    from shared.models import TrainedModel

    config = Config.from_env(env)
    model_id = uuid.uuid4().hex
    with session_scope(config.database_url) as session:
        owner = sm.create_job(session, "train", {"bench": True})
        session.add(TrainedModel(id=model_id, job_id=owner.id, backbone="bench", classes=["a", "b"], image_size=0,
                                 metrics={}, path=str(model_path)))
    logs = Path(env["GRAFT_VAR_DIR"])
    procs = []
    for i in range(workers):
        log = open(logs / f"worker{i}.log", "wb")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--name", f"bench{i}-{uuid.uuid4().hex[:4]}", "--loglevel", "WARNING"],
            cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log))
    try:
        client = create_app(config).test_client()

        def job(input_dir: Path, precision: str) -> dict:
            body = {"model_id": model_id, "input_dir": str(input_dir), "chunk_size": chunk_size, "precision": precision}
            submitted = client.post("/api/v1/jobs/predict", json=body).get_json()
            while True:
                state = client.get(f"/api/v1/jobs/{submitted['id']}").get_json()
                if state["status"] not in ("queued", "running"):
                    return state
                time.sleep(0.05)

        warm = folder.parent / "warmup"
        warm.mkdir(exist_ok=True)
        for p in sorted(folder.iterdir())[: 4 * workers]:
            shutil.copy(p, warm / p.name)
        speeds = {}
        for precision in precisions:
            state = job(warm, precision)  # starts the workers' pools and fills each worker's model cache
            if state["status"] != "succeeded":
                sys.exit(f"warm-up job {state['status']}: {state['error']}")
            t0 = time.perf_counter()
            state = job(folder, precision)
            seconds = time.perf_counter() - t0
            if state["status"] != "succeeded" or state["metrics"]["summary"]["files"] != n:
                sys.exit(f"bench job {state['status']}: {state['error']}")
            speeds[precision] = n / seconds
        return speeds, max(peak_rss_mb(p.pid) for p, _ in procs)
    finally:
        for proc, log in procs:
            os.killpg(proc.pid, signal.SIGTERM)  # the worker and its pool children
            proc.wait(60)
            log.close()


def run_core(model_path: Path, paths: list[Path], precision: str) -> tuple[float, float]:
    """images/s of the worker's core in this process, and its top-1 agreement with the eager fp32 model."""
    from worker.core.predict import Predictor

    files = [(p.name, p) for p in paths]
    fast = Predictor.from_artifact(model_path, precision=precision)
    fast.predict_files(files[:8])
    t0 = time.perf_counter()
    rows = fast.predict_files(files)
    speed = len(files) / (time.perf_counter() - t0)
    eager = Predictor.from_artifact(model_path, optimize=False).predict_files(files)
    agree = float(np.mean([a["label"] == b["label"] for a, b in zip(rows, eager)]))
    return speed, agree


def run_plain(model_path: Path, paths: list[Path]) -> float:
    """images/s of the textbook loop: PIL, torchvision transforms, one image at a time, same weights."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from worker.core.checkpoint import load_model_artifact

    model, meta = load_model_artifact(model_path)
    model = model.to(memory_format=torch.contiguous_format)  # as a textbook model: plain NCHW
    prep = meta["preprocessing"]
    tf = T.Compose([T.Resize(prep.resize), T.CenterCrop(prep.crop), T.ToTensor(), T.Normalize(prep.mean, prep.std)])
    with torch.no_grad():
        model(tf(Image.open(paths[0]).convert("RGB")).unsqueeze(0))
        t0 = time.perf_counter()
        for path in paths:
            with Image.open(path) as img:
                model(tf(img.convert("RGB")).unsqueeze(0)).argmax(1)
        return len(paths) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=512, help="images to classify")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--images", type=Path, help="use JPEGs from this folder instead of generated ones")
    parser.add_argument("--backbone", default="resnet18", choices=["resnet18", "efficientnet_lite0"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1, help="`graft worker` processes for the job")
    parser.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16 or both")
    parser.add_argument("--skip-job", action="store_true", help="only the in-process figures (no Redis needed)")
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="graft-bench-"))
    try:
        data = base / "data" / "images"
        paths = real_jpegs(args.images, data, args.n) if args.images else make_jpegs(data, args.n, args.width, args.height)
        model_path = write_model(base / "model", args.backbone, args.image_size, ["a", "b"])
        env = {
            "GRAFT_VAR_DIR": str(base), "GRAFT_DATABASE_URL": f"sqlite:///{base / 'bench.db'}",
            "GRAFT_ARTIFACTS_DIR": str(base / "artifacts"), "GRAFT_DATA_ROOTS": str(base / "data"),
            "GRAFT_QUEUE": f"graft-bench-{uuid.uuid4().hex[:8]}", "GRAFT_API_TOKENS": "",
            "GRAFT_REDIS_URL": os.environ.get("GRAFT_REDIS_URL", "redis://127.0.0.1:6379/0"),
        }
        print(f"images: {args.n} ({'from ' + str(args.images) if args.images else f'generated {args.width}x{args.height}'}),"
              f" cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
        precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
        job_speeds: dict[str, float] = {}
        rss = None
        if not args.skip_job:
            job_speeds, rss = run_job(env, model_path, data, args.n, args.chunk_size, args.workers, precisions)
        core = {p: run_core(model_path, paths, p) for p in precisions}
        plain_speed = run_plain(model_path, paths)
        for p in precisions:
            if p in job_speeds:
                print(f"predict job {p} (end to end, {args.workers} worker(s)): {job_speeds[p]:7.1f} images/s"
                      f"  = {job_speeds[p] / plain_speed:.2f}x plain")
            print(f"worker core {p} in process:              {core[p][0]:7.1f} images/s"
                  f"  top-1 agreement with eager fp32: {core[p][1] * 100:.2f} %")
        print(f"plain torchvision loop (batch 1, PIL):    {plain_speed:7.1f} images/s")
        if rss is not None:
            print(f"worker peak RSS:                          {rss:7.0f} MiB")
        print(f"this process peak RSS (core + plain):     {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:7.0f} MiB")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
