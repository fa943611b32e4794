"""Predict throughput: a real predict job (Redis, `graft worker`, SQLite) against a plain single-process torchvision loop.

    .venv/bin/python bench/predict_bench.py [--n 512] [--images DIR] [--backbone efficientnet_lite0] [--image-size 224]
                                            [--runtime openvino[,torch]] [--precision fp32[,bf16]]

Prints images/s for the job (end to end, warm model cache), for the worker's core in process, for the model alone
(the ceiling: crops ready in memory, the measured batch size) and for the plain loop, the ratios, the share of CPU
time in each phase of the core (decode, crop, inference, each timed alone), the load average, the worker's peak
RSS, and the top-1 agreement of each runtime with eager PyTorch fp32: on the
bench model and images, and on real photos (--agree-images, default the hymenoptera set when present) with the
ImageNet-trained EfficientNet-Lite0 and its 1000 classes, where near-ties are common and disagreements show.
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
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera"
Variant = tuple[str, str]  # (precision, runtime)

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
    from graft.worker.core.backbones import BACKBONES, WeightsNotFound, build_model
    from graft.worker.core.checkpoint import save_model_artifact
    from graft.worker.core.transforms import Preprocessing

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
            variants: list[Variant]) -> tuple[dict[Variant, float], float]:
    """images/s of one predict job per variant (each after a warm-up job), and the workers' peak RSS (MiB)."""
    from graft.api import create_app
    from graft.shared import lifecycle
    from graft.shared.config import Config
    from graft.shared.db import session_scope
    from graft.shared.models import TrainedModel
    from graft.shared.schema import upgrade

    config = Config.from_env(env)
    upgrade(config.database_url)  # a fresh database: the tables, as `graft db upgrade` makes them
    model_id = uuid.uuid4().hex
    with session_scope(config.database_url) as session:
        owner = lifecycle.create_job(session, "train", {"bench": True})
        session.add(TrainedModel(id=model_id, job_id=owner.id, backbone="bench", classes=["a", "b"], image_size=0,
                                 metrics={}, path=str(model_path)))
    logs = Path(env["GRAFT_VAR_DIR"])
    procs = []
    for i in range(workers):
        log = open(logs / f"worker{i}.log", "wb")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "graft.cli.main", "worker", "--name", f"bench{i}-{uuid.uuid4().hex[:4]}", "--loglevel", "WARNING"],
            cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log))
    try:
        client = create_app(config).test_client()

        def job(input_dir: Path, variant: Variant) -> dict:
            body = {"model_id": model_id, "input_dir": str(input_dir), "chunk_size": chunk_size,
                    "precision": variant[0], "runtime": variant[1]}
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
        for variant in variants:
            state = job(warm, variant)  # starts the workers' pools and fills each worker's model cache
            if state["status"] != "succeeded":
                sys.exit(f"warm-up job {state['status']}: {state['error']}")
            t0 = time.perf_counter()
            state = job(folder, variant)
            seconds = time.perf_counter() - t0
            if state["status"] != "succeeded" or state["metrics"]["summary"]["files"] != n:
                sys.exit(f"bench job {state['status']}: {state['error']}")
            speeds[variant] = n / seconds
        return speeds, max(peak_rss_mb(p.pid) for p, _ in procs)
    finally:
        for proc, log in procs:
            os.killpg(proc.pid, signal.SIGTERM)  # the worker and its pool children
            proc.wait(60)
            log.close()


def _eager(model_path: Path):  # noqa: ANN202 - a Predictor
    from graft.worker.core.predict import Predictor

    return Predictor.from_artifact(model_path, optimize=False, runtime="torch")


def _agreement(rows: list[dict], reference: list[dict]) -> tuple[float, float]:
    """Share of equal top-1 labels, and the largest top-1 confidence difference."""
    pairs = [(a, b) for a, b in zip(rows, reference) if a["error"] is None]
    same = float(np.mean([a["label"] == b["label"] for a, b in pairs]))
    return same, max((abs(a["confidence"] - b["confidence"]) for a, b in pairs if a["label"] == b["label"]), default=0.0)


def run_core(model_path: Path, paths: list[Path], variant: Variant) -> tuple[float, str, tuple[float, float]]:
    """images/s of the worker's core in this process, the runtime it used, and its agreement with eager fp32."""
    from graft.worker.core.predict import Predictor

    files = [(p.name, p) for p in paths]
    fast = Predictor.from_artifact(model_path, precision=variant[0], runtime=variant[1])
    fast.predict_files(files[:8])
    t0 = time.perf_counter()
    rows = fast.predict_files(files)
    speed = len(files) / (time.perf_counter() - t0)
    return speed, fast.runtime, _agreement(rows, _eager(model_path).predict_files(files))


def run_phases(model_path: Path, paths: list[Path], variant: Variant) -> dict[str, float]:
    """Seconds per image of each phase alone (decode on one thread, crop, inference at the chosen batch size)."""
    from graft.worker.core.images import decode_image
    from graft.worker.core.predict import Predictor, crop_batch

    predictor = Predictor.from_artifact(model_path, precision=variant[0], runtime=variant[1])
    prep, n = predictor.prep, len(paths)
    t0 = time.perf_counter()
    decoded = [decode_image(p, prep.resize) for p in paths]
    t1 = time.perf_counter()
    crops = crop_batch(decoded, prep)
    t2 = time.perf_counter()
    for i in range(0, n, predictor.batch_size):
        predictor.runner(crops[i : i + predictor.batch_size])
    t3 = time.perf_counter()
    return {"decode": (t1 - t0) / n, "crop": (t2 - t1) / n, "inference": (t3 - t2) / n,
            "batch_size": predictor.batch_size}


def imagenet_agreement(folder: Path, base: Path, variants: list[Variant]) -> dict[Variant, tuple[float, float, int]]:
    """Per variant: top-1 agreement with eager fp32 and the largest confidence difference, for the ImageNet-trained
    EfficientNet-Lite0 (all 1000 classes) on every JPEG below folder; {} when its weights are not installed."""
    from graft.worker.core.backbones import BACKBONES, WeightsNotFound, build_model, lite0_imagenet
    from graft.worker.core.checkpoint import save_model_artifact
    from graft.worker.core.predict import Predictor
    from graft.worker.core.transforms import Preprocessing

    try:
        model = build_model("efficientnet_lite0", 1000, pretrained=True)
        model.head.load_state_dict(lite0_imagenet()._fc.state_dict())
    except (WeightsNotFound, ImportError) as exc:
        print(f"imagenet agreement skipped: {exc}")
        return {}
    info = BACKBONES["efficientnet_lite0"]
    meta = {"backbone": "efficientnet_lite0", "classes": [f"imagenet{i:04d}" for i in range(1000)], "image_size": 224,
            "preprocessing": Preprocessing.for_size(224, info.mean, info.std).to_dict(), "metrics": {}, "params": {}}
    path = save_model_artifact(base / "lite0-imagenet", model.eval(), meta)
    files = [(p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*"))
             if p.suffix.lower() in (".jpg", ".jpeg")]
    reference = _eager(path).predict_files(files)
    out = {}
    for variant in variants:
        rows = Predictor.from_artifact(path, precision=variant[0], runtime=variant[1]).predict_files(files)
        out[variant] = (*_agreement(rows, reference), len(files))
    return out


def run_plain(model_path: Path, paths: list[Path]) -> float:
    """images/s of the textbook loop: PIL, torchvision transforms, one image at a time, same weights."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from graft.worker.core.checkpoint import load_model_artifact

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
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=["resnet18", "efficientnet_lite0"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1, help="`graft worker` processes for the job")
    parser.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16 or both")
    parser.add_argument("--runtime", default=None,
                        help="comma-separated fp32 runtimes: openvino, torch (default: the server's, openvino)")
    parser.add_argument("--agree-images", type=lambda s: Path(s) if s else None,
                        default=HYMENOPTERA if HYMENOPTERA.is_dir() else None,
                        help="real photos for the ImageNet agreement check (default: hymenoptera when present)")
    parser.add_argument("--skip-plain", action="store_true", help="leave out the plain torchvision loop")
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
            "GRAFT_INSECURE_NO_AUTH": "1",  # an in-process test client on a throw-away database: nothing to guard
            "GRAFT_REDIS_URL": os.environ.get("GRAFT_REDIS_URL", "redis://127.0.0.1:6379/0"),
        }
        print(f"images: {args.n} ({'from ' + str(args.images) if args.images else f'generated {args.width}x{args.height}'}),"
              f" cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
        from graft.worker.core.runtimes import DEFAULT_RUNTIME

        precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
        runtimes = [r.strip() for r in (args.runtime or DEFAULT_RUNTIME).split(",") if r.strip()]
        # bf16 runs on torch whatever the runtime; fp32 once per runtime asked for.
        variants = [(p, r) for p in precisions for r in (runtimes if p == "fp32" else ["torch"])]
        job_speeds: dict[Variant, float] = {}
        rss = None
        if not args.skip_job:
            job_speeds, rss = run_job(env, model_path, data, args.n, args.chunk_size, args.workers, variants)
        core = {v: run_core(model_path, paths, v) for v in variants}
        load_core = os.getloadavg()[0]
        phases = {v: run_phases(model_path, paths, v) for v in variants}
        plain_speed = None if args.skip_plain else run_plain(model_path, paths)
        imagenet = imagenet_agreement(args.agree_images, base, variants) if args.agree_images else {}
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print()
        for v in variants:
            name = f"{v[0]} {core[v][1]}" + (f" (asked {v[1]})" if core[v][1] != v[1] else "")
            if v in job_speeds:
                ratio = f"  = {job_speeds[v] / plain_speed:.2f}x plain" if plain_speed else ""
                print(f"predict job, {name}, end to end ({args.workers} worker):".ljust(52)
                      + f"{job_speeds[v]:7.1f} images/s{ratio}")
            ratio = f"  = {core[v][0] / plain_speed:.2f}x plain" if plain_speed else ""
            print(f"worker core, {name}, in process:".ljust(52) + f"{core[v][0]:7.1f} images/s{ratio}"
                  f"  (load {load_core:.1f})")
            ph = phases[v]
            model_only = 1 / ph["inference"]
            print(f"model only, {name}, batch {ph['batch_size']} (measured):".ljust(52) + f"{model_only:7.1f} images/s"
                  f"  core = {core[v][0] / model_only:.0%} of it")
            cpu = {k: ph[k] for k in ("decode", "crop", "inference")}
            print("  CPU time per image by phase, each alone: " + ", ".join(
                f"{k} {1000 * t:.1f} ms ({t / sum(cpu.values()):.0%})" for k, t in cpu.items()))
        if plain_speed:
            print("plain torchvision loop (batch 1, PIL, eager fp32):".ljust(52) + f"{plain_speed:7.1f} images/s")
        if rss is not None:
            print("worker peak RSS (largest worker process):".ljust(52) + f"{rss:7.0f} MiB")
        print("this process peak RSS (core + plain + checks):".ljust(52)
              + f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:7.0f} MiB")
        for v in variants:
            same, diff = core[v][2]
            print(f"agreement with eager fp32, {v[0]} {core[v][1]}, bench model on bench images:".ljust(76)
                  + f"{same * 100:6.2f} % top-1, max |confidence diff| {diff:.1e}")
            if v in imagenet:
                same, diff, count = imagenet[v]
                print(f"agreement with eager fp32, {v[0]} {core[v][1]}, Lite0 ImageNet-1000 on {count} photos:".ljust(76)
                      + f"{same * 100:6.2f} % top-1, max |confidence diff| {diff:.1e}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
