"""Per-image costs of each EfficientNet-Lite on this machine: the table `backbone: auto` chooses from.

Measures, at each backbone's own input size, the frozen trunk's forward pass as a job runs it (the caching pass,
most of a job: `worker/core/trunk.py:make_trunk`, OpenVINO unless --runtime torch, batches of the pipeline's
TRUNK_BATCH, uint8 crops in) and one fine-tune step of the stages a job unfreezes (`finetune_stages`) from cached
activations (forward + backward, batch 32).
Prints a table and the COSTS dict to paste into worker/core/selection.py. Run: python bench/backbone_costs.py
"""
from __future__ import annotations

import argparse
import os
import time

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from graft.worker.core.backbones import BACKBONES, build_model
from graft.worker.core.pipeline import TRUNK_BATCH
from graft.worker.core.transforms import Preprocessing
from graft.worker.core.trunk import make_trunk

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _best_of(fn, repeats: int) -> float:  # noqa: ANN001
    fn()  # warm-up: oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(name: str, batch: int, repeats: int, runtime: str) -> tuple[float, float]:
    """Seconds per image: (frozen forward as the caching pass runs it, fine-tune step of the unfrozen stages)."""
    info = BACKBONES[name]
    model = build_model(name, 2, pretrained=False).eval()
    prep = Preprocessing.for_size(info.image_size, info.mean, info.std)
    split_at = len(model.stages) - info.finetune_stages
    trunk = make_trunk(model, split_at, prep, runtime, Path(tempfile.mkdtemp(prefix="graft-costs-")))
    crops = np.random.default_rng(0).integers(0, 256, (TRUNK_BATCH * 4, prep.crop, prep.crop, 3), dtype=np.uint8)

    def forward() -> None:
        for i in range(0, len(crops), TRUNK_BATCH):
            trunk(crops[i : i + TRUNK_BATCH])

    forward_s = _best_of(forward, repeats) / len(crops)
    x = torch.randn(batch, 3, info.image_size, info.image_size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        maps = model.run_stages(x, 0, split_at)
    model.train()
    opt = torch.optim.AdamW([p for s in model.stages[split_at:] for p in s.parameters()] + list(model.head.parameters()))
    y = torch.zeros(batch, dtype=torch.long)

    def step() -> None:
        loss = F.cross_entropy(model.classify(model.pool(model.run_stages(maps, split_at))), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return forward_s, _best_of(step, repeats) / batch


def main() -> None:
    """Measure every Lite and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtime", default="openvino", choices=("openvino", "torch"))
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}, runtime {args.runtime}, load average {os.getloadavg()[0]:.1f}")
    print("| backbone | input | forward ms/image | fine-tune ms/image | forward ratio to Lite0 |")
    print("|---|---|---|---|---|")
    costs = {}
    for name in LITES:
        costs[name] = measure(name, args.batch, args.repeats, args.runtime)
    base = costs[LITES[0]][0]
    for name, (fwd, ft) in costs.items():
        print(f"| {name} | {BACKBONES[name].image_size} | {fwd * 1e3:.1f} | {ft * 1e3:.1f} | {fwd / base:.2f} |")
    print("COSTS =", {k: (round(f, 4), round(t, 4)) for k, (f, t) in costs.items()})


if __name__ == "__main__":
    main()
