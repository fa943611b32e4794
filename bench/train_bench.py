"""Training benchmark: Graft's default job against the PyTorch tutorial's recipe and a plain loop, in one run.

    python bench/train_bench.py [DATA_DIR] [--baseline-epochs 2] [--threads N] [--resnet-modes] [--json out.json]

Each part runs in its own process so that its peak RSS is its own:
- the tutorial recipe (ResNet-18, full fine-tune, batch 4), timed for --baseline-epochs and projected to 25;
- Graft's default job (every setting at its default: `backbone: auto` picks the backbone) with an empty worker cache
  (first job), then the same job again on that cache (second job);
- a plain loop: Graft's model and schedule (the backbone the default job picked, head epochs then the stages it
  unfreezes), written the textbook way (ImageFolder, DataLoader, the frozen trunk run again in eager PyTorch every
  epoch), one epoch of each phase timed and projected to the schedule's epochs;
- the default job again with the caching pass on eager PyTorch and no cache (the accuracy reference: same seed,
  same split, same views).
It prints wall time, best and final val accuracy, peak RSS and the load average for each, the share of time in
each phase of Graft's jobs, and the ratios. With --resnet-modes, also ResNet-18 (random weights: time only) in each
mode.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera"
TUTORIAL_EPOCHS = 25


def _val_acc(model: Any, loader: Any) -> float:  # noqa: ANN401 - a torch module and DataLoader, imported per part
    """Top-1 accuracy of model (put in eval mode) over loader, the textbook way."""
    import torch

    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total

def run_tutorial(data: Path, epochs: int) -> dict:
    """The tutorial's recipe as published: ImageFolder + DataLoader, SGD 0.001/0.9, StepLR(7, 0.1), batch 4."""
    import torch
    from torch import nn
    from torchvision import datasets, models, transforms

    from graft.worker.core.backbones import WeightsNotFound, resolve_resnet18_weights

    norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    tfs = {
        "train": transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), norm]),
        "val": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm]),
    }
    sets = {k: datasets.ImageFolder(str(data / k), tfs[k]) for k in ("train", "val")}
    loaders = {k: torch.utils.data.DataLoader(sets[k], batch_size=4, shuffle=k == "train", num_workers=2)
               for k in sets}
    model = models.resnet18(weights=None)
    try:
        model.load_state_dict(torch.load(resolve_resnet18_weights(os.environ.get("GRAFT_RESNET18_WEIGHTS")),
                                         weights_only=True))
        weights = "imagenet"
    except WeightsNotFound:
        weights = "random (ImageNet weights not installed: time only)"
    model.fc = nn.Linear(model.fc.in_features, len(sets["train"].classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = nn.CrossEntropyLoss()
    history, started = [], time.monotonic()
    for _ in range(epochs):
        t0 = time.monotonic()
        model.train()
        for x, y in loaders["train"]:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        scheduler.step()
        history.append({"seconds": time.monotonic() - t0, "val_acc": _val_acc(model, loaders["val"])})
    per_epoch = sum(h["seconds"] for h in history) / len(history)
    return {"weights": weights, "epochs_run": epochs, "seconds": time.monotonic() - started,
            "seconds_per_epoch": per_epoch, "projected_seconds": per_epoch * TUTORIAL_EPOCHS,
            "best_val_acc": max(h["val_acc"] for h in history), "final_val_acc": history[-1]["val_acc"]}


def run_plain(data: Path, epochs: int, backbone: str) -> dict:
    """Graft's model and schedule the textbook way: PIL + DataLoader, trunk in eager PyTorch every epoch."""
    import torch
    import torch.nn.functional as F
    from torchvision import datasets, transforms

    from graft.worker.core.backbones import BACKBONES, build_model
    from graft.worker.core.spec import TrainSpec, lr_lambdas

    info = BACKBONES[backbone]
    spec = TrainSpec(backbone=backbone, image_size=info.image_size)
    size = info.image_size
    norm = transforms.Normalize(info.mean, info.std)
    tfs = {
        "train": transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.25, 1.0)),
                                     transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]),
        "val": transforms.Compose([transforms.Resize(round(size * 8 / 7)), transforms.CenterCrop(size), transforms.ToTensor(), norm]),
    }
    sets = {k: datasets.ImageFolder(str(data / k), tfs[k]) for k in ("train", "val")}
    loaders = {k: torch.utils.data.DataLoader(sets[k], batch_size=spec.batch_size, shuffle=k == "train",
                                              num_workers=2) for k in sets}
    model = build_model(spec.backbone, len(sets["train"].classes), True)
    trunk = [p for stage in model.stages for p in stage.parameters()]
    optimizer = torch.optim.AdamW([{"params": list(model.head.parameters())}, {"params": trunk}],
                                  lr=spec.learning_rate, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(spec))
    split_at = len(model.stages) - info.finetune_stages
    frozen_phase, history, started = spec.frozen_phase(), [], time.monotonic()
    phases = ["head"] * min(epochs, 1) + ["finetune"] * max(0, epochs - 1)  # one epoch of each phase at least
    for epoch, phase in enumerate(phases):
        t0 = time.monotonic()
        frozen = len(model.stages) if phase == "head" else split_at
        model.train()
        for i, stage in enumerate(model.stages):
            stage.train(i >= frozen)
        for x, y in loaders["train"]:
            loss = F.cross_entropy(model(x, frozen), y, label_smoothing=spec.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        history.append({"phase": phase, "seconds": time.monotonic() - t0, "val_acc": _val_acc(model, loaders["val"])})
    per = {ph: sum(h["seconds"] for h in history if h["phase"] == ph) / max(1, sum(h["phase"] == ph for h in history))
           for ph in ("head", "finetune")}
    projected = per["head"] * frozen_phase + per["finetune"] * (spec.epochs - frozen_phase)
    return {"epochs_run": len(history), "seconds": time.monotonic() - started, "seconds_per_epoch": per,
            "projected_seconds": projected, "projected_epochs": spec.epochs,
            "best_val_acc": max(h["val_acc"] for h in history), "final_val_acc": history[-1]["val_acc"]}


def run_graft(data: Path, backbone: str | None, mode: str | None, weights: str | None, cache: str | None = None,
              runtime: str = "openvino") -> dict:
    """Graft's training core with default settings (a job with only data_dir; backbone and mode when given)."""
    from graft.worker.core.train import Caching, TrainSpec, fit

    tmp = Path(tempfile.mkdtemp(prefix="graft-bench-"))
    spec = TrainSpec(**{k: v for k, v in (("backbone", backbone), ("mode", mode)) if v is not None})
    caching = Caching.on_disk(Path(cache), 2048, runtime) if cache else Caching(runtime=runtime)
    started = time.monotonic()
    result = fit(data, spec, tmp / "job", tmp / "model", resnet18_weights=weights, caching=caching)
    seconds = time.monotonic() - started
    m = result.metrics
    history = m["history"]
    by_phase: dict[str, list[float]] = {}
    for h in history:
        by_phase.setdefault(h["phase"], []).append(h["seconds"])
    phases = {"decode": m["timings"]["loading_s"], "trunk pass": m["timings"]["caching_s"],
              **{f"{k} epochs": sum(v) for k, v in by_phase.items()}}
    phases["other (model, checkpoints)"] = max(0.0, seconds - sum(phases.values()))
    return {"backbone": result.backbone, "backbone_choice": m.get("backbone_choice"), "mode": m["mode"], "seconds": seconds,
            "selected": m.get("selected"), "estimated_acc": m.get("estimated_acc"),
            "best_val_acc": m["best_val_acc"], "best_epoch": m["best_epoch"], "final_val_acc": m["final_val_acc"],
            "epochs_run": len(history), "stopped_early": m["stopped_early"], "caching": m["caching"],
            "seconds_per_epoch": {k: sum(v) / len(v) for k, v in by_phase.items()}, "phases": phases,
            "seconds_before_first_epoch": m["seconds"] - sum(h["seconds"] for h in history)}


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.child == "tutorial":
        out = run_tutorial(Path(args.data), args.baseline_epochs)
    elif args.child == "plain":
        out = run_plain(Path(args.data), args.baseline_epochs, args.backbone)
    else:
        out = run_graft(Path(args.data), args.backbone, args.mode, args.weights, args.cache, args.runtime)
    out["load_average"] = os.getloadavg()[0]
    print("RESULT " + json.dumps(out), flush=True)


def _spawn(*argv: str) -> dict:
    """Run this script as a child; return its RESULT and its own peak RSS (from wait4)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, __file__, *argv], cwd=ROOT, stdout=out, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        line = next((ln for ln in out.read().splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"child {argv} failed (exit {proc.returncode})")
    result = json.loads(line[len("RESULT "):])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def _random_resnet18(path: Path) -> None:
    import torch
    from torchvision.models import resnet18

    torch.save(resnet18(weights=None).state_dict(), path)


def _graft_line(title: str, r: dict) -> str:
    total = r["seconds"]
    shares = ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f}%)" for k, v in r["phases"].items())
    choice = r.get("backbone_choice") or {}
    picked = f" (auto; estimates {choice.get('estimated_s')})" if choice else ""
    return (f"{title}: {r['backbone']}{picked}, {total:.1f} s wall, best val acc {r['best_val_acc']:.4f} (epoch {r['best_epoch']}), "
            f"final {r['final_val_acc']:.4f}, {r['epochs_run']} epochs, peak RSS {r['peak_rss_mb']:.0f} MB, "
            f"load {r['load_average']:.1f}; final model: {r.get('selected')} (estimate {r.get('estimated_acc')}); trunk pass on {r['caching'].get('runtime')}: "
            f"{r['caching'].get('views_computed')} views computed, {r['caching'].get('views_reused')} reused\n"
            f"    phases: {shares}")


def main() -> None:
    """Parse arguments, run every part, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA))
    parser.add_argument("--baseline-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in every part (default: the cores)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--resnet-modes", action="store_true", help="also ResNet-18 in each mode (time only)")
    parser.add_argument("--skip-reference", action="store_true", help="leave out the eager-PyTorch caching pass")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", default="openvino", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    threads = str(args.threads)
    print(f"data: {args.data}   cores: {os.cpu_count()}   load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    common = (args.data, "--threads", threads, "--baseline-epochs", str(args.baseline_epochs))
    cache = tempfile.mkdtemp(prefix="graft-bench-cache-")
    figures: dict = {}
    tutorial = figures["tutorial"] = _spawn(*common, "--child", "tutorial")
    print(f"tutorial recipe (resnet18, {tutorial['weights']}): {tutorial['seconds_per_epoch']:.1f} s/epoch, "
          f"projected {TUTORIAL_EPOCHS} epochs = {tutorial['projected_seconds']:.0f} s; "
          f"val acc after {tutorial['epochs_run']} epochs best {tutorial['best_val_acc']:.3f} "
          f"final {tutorial['final_val_acc']:.3f}; peak RSS {tutorial['peak_rss_mb']:.0f} MB, "
          f"load {tutorial['load_average']:.1f}", flush=True)
    first = figures["graft_first"] = _spawn(*common, "--child", "graft", "--cache", cache)
    print(_graft_line("graft default, first job (empty cache)", first), flush=True)
    second = figures["graft_second"] = _spawn(*common, "--child", "graft", "--cache", cache)
    print(_graft_line("graft default, second job (same data, warm cache)", second), flush=True)
    plain = figures["plain"] = _spawn(*common, "--child", "plain", "--backbone", first["backbone"])
    per = ", ".join(f"{k} {v:.1f} s/epoch" for k, v in plain["seconds_per_epoch"].items())
    print(f"plain loop ({first['backbone']}, Graft's schedule, trunk every epoch): {per}, projected {plain['projected_epochs']} "
          f"epochs = {plain['projected_seconds']:.0f} s; peak RSS {plain['peak_rss_mb']:.0f} MB, "
          f"load {plain['load_average']:.1f}", flush=True)
    figures.update(speedup_vs_tutorial=tutorial["projected_seconds"] / first["seconds"],
                   speedup_vs_plain=plain["projected_seconds"] / first["seconds"],
                   second_job_speedup=first["seconds"] / second["seconds"])
    print(f"speed-up vs the projected tutorial run: {figures['speedup_vs_tutorial']:.1f}x; "
          f"vs the projected plain loop: {figures['speedup_vs_plain']:.1f}x; "
          f"second job vs first: {figures['second_job_speedup']:.1f}x", flush=True)
    if not args.skip_reference:
        reference = figures["graft_torch_trunk"] = _spawn(*common, "--child", "graft", "--runtime", "torch")
        print(_graft_line("graft default, caching pass on eager torch (reference)", reference))
        same = (first["best_val_acc"] >= reference["best_val_acc"], first["final_val_acc"] >= reference["final_val_acc"])
        print(f"accuracy vs the torch reference: best {'equal or better' if same[0] else 'WORSE'}, "
              f"final {'equal or better' if same[1] else 'WORSE'}", flush=True)
    if args.resnet_modes:
        weights = Path(tempfile.mkdtemp()) / "resnet18-random.pth"
        _random_resnet18(weights)
        figures["resnet18_modes"] = {}
        for mode in ("linear", "finetune", "full"):
            r = _spawn(*common, "--child", "graft", "--backbone", "resnet18", "--mode", mode, "--weights", str(weights))
            figures["resnet18_modes"][mode] = r
            per = ", ".join(f"{k} {v:.2f} s/epoch" for k, v in r["seconds_per_epoch"].items())
            print(f"resnet18 (random weights, time only) mode {mode}: {per}; "
                  f"{r['seconds_before_first_epoch']:.1f} s decode+cache; {r['seconds']:.1f} s total; "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
