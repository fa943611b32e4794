"""Training benchmark: the PyTorch tutorial's recipe against Graft's default job, on the same data and cores.

    python bench/train_bench.py [DATA_DIR] [--baseline-epochs 2] [--json out.json]

Each part runs in its own process so that its peak RSS is its own. It prints wall time, best and final val
accuracy, and peak RSS for each, and the ratio. It also prints ResNet-18 seconds per epoch in each Graft mode.
ResNet-18's ImageNet weights are not installed here, so those runs use random weights, and their times are the
only figures that mean anything.
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

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera"
TUTORIAL_EPOCHS = 25


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
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in loaders["val"]:
                correct += int((model(x).argmax(1) == y).sum())
        history.append({"seconds": time.monotonic() - t0, "val_acc": correct / len(sets["val"])})
    per_epoch = sum(h["seconds"] for h in history) / len(history)
    return {"weights": weights, "epochs_run": epochs, "seconds": time.monotonic() - started,
            "seconds_per_epoch": per_epoch, "projected_seconds": per_epoch * TUTORIAL_EPOCHS,
            "best_val_acc": max(h["val_acc"] for h in history), "final_val_acc": history[-1]["val_acc"]}


def run_graft(data: Path, backbone: str, mode: str, weights: str | None) -> dict:
    """Graft's training core with default settings (what a job with only data_dir and backbone runs)."""
    from graft.worker.core.train import TrainSpec, fit

    tmp = Path(tempfile.mkdtemp(prefix="graft-bench-"))
    spec = TrainSpec(backbone=backbone, mode=mode)
    started = time.monotonic()
    result = fit(data, spec, tmp / "job", tmp / "model", resnet18_weights=weights)
    m = result.metrics
    history = m["history"]
    by_phase: dict[str, list[float]] = {}
    for h in history:
        by_phase.setdefault(h["phase"], []).append(h["seconds"])
    return {"backbone": backbone, "mode": m["mode"], "seconds": time.monotonic() - started,
            "best_val_acc": m["best_val_acc"], "best_epoch": m["best_epoch"], "final_val_acc": m["final_val_acc"],
            "epochs_run": len(history), "stopped_early": m["stopped_early"],
            "seconds_per_epoch": {k: sum(v) / len(v) for k, v in by_phase.items()},
            "seconds_before_first_epoch": m["seconds"] - sum(h["seconds"] for h in history)}


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    if args.child == "tutorial":
        out = run_tutorial(Path(args.data), args.baseline_epochs)
    else:
        out = run_graft(Path(args.data), args.backbone, args.mode, args.weights)
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


def main() -> None:
    """Parse arguments, run every part, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA))
    parser.add_argument("--baseline-epochs", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--skip-resnet-modes", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", default="efficientnet_lite0", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    print(f"data: {args.data}   cores: {os.cpu_count()}", flush=True)
    tutorial = _spawn(args.data, "--child", "tutorial", "--baseline-epochs", str(args.baseline_epochs))
    graft = _spawn(args.data, "--child", "graft", "--backbone", "efficientnet_lite0", "--mode", "auto")
    figures = {"tutorial": tutorial, "graft": graft, "speedup": tutorial["projected_seconds"] / graft["seconds"]}
    print(f"\ntutorial recipe (resnet18, {tutorial['weights']}): {tutorial['seconds_per_epoch']:.1f} s/epoch, "
          f"projected {TUTORIAL_EPOCHS} epochs = {tutorial['projected_seconds']:.0f} s; "
          f"val acc after {tutorial['epochs_run']} epochs best {tutorial['best_val_acc']:.3f} "
          f"final {tutorial['final_val_acc']:.3f}; peak RSS {tutorial['peak_rss_mb']:.0f} MB")
    print(f"graft default (efficientnet_lite0, mode {graft['mode']}): {graft['seconds']:.1f} s wall, "
          f"best val acc {graft['best_val_acc']:.4f} (epoch {graft['best_epoch']}), final {graft['final_val_acc']:.4f}, "
          f"{graft['epochs_run']} epochs, peak RSS {graft['peak_rss_mb']:.0f} MB")
    print(f"speed-up vs the projected tutorial run: {figures['speedup']:.1f}x")
    if not args.skip_resnet_modes:
        weights = Path(tempfile.mkdtemp()) / "resnet18-random.pth"
        _random_resnet18(weights)
        figures["resnet18_modes"] = {}
        for mode in ("linear", "finetune", "full"):
            r = _spawn(args.data, "--child", "graft", "--backbone", "resnet18", "--mode", mode, "--weights", str(weights))
            figures["resnet18_modes"][mode] = r
            per = ", ".join(f"{k} {v:.2f} s/epoch" for k, v in r["seconds_per_epoch"].items())
            print(f"resnet18 (random weights, time only) mode {mode}: {per}; "
                  f"{r['seconds_before_first_epoch']:.1f} s decode+cache; {r['seconds']:.1f} s total; "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
