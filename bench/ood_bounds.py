"""How far the kNN `unknown` score can go on four domains: the shipped rule against the best any threshold can do.

For each set, size and seeded draw (bench/domain_features.py), on one backbone's frozen pooled features:
- the shipped rule (worker/core/ood.py:fit_knn on the drawn images): the share of the set's familiar test images
  it flags, and the share of every other set's images it flags;
- the bound: the threshold placed, with hindsight, at the familiar test scores' 99th percentile (1 % flagged, the
  issue's ceiling), and the share of other sets' images above it. No rule on the same score can flag more of the
  other sets while keeping the familiar images' flags at 1 %: where the bound is under 99 %, the score itself,
  not its threshold, misses the target.
Prints a table (mean over draws). Run: python bench/ood_bounds.py [--backbone efficientnet_lite0] [--seeds 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from graft.worker.core.ood import fit_knn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from domain_features import SETS, draw, features, images  # noqa: E402

FAMILIAR_CEILING = 0.01


def main() -> None:
    """Print the shipped rule's rates and the bound per set and size."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--sizes", default="10,20,50,all")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    data = {name: images(name) for name in SETS}
    plain = {name: features(data[name], args.backbone)[0] for name in SETS}
    print(f"{args.backbone}: familiar flagged / other sets flagged, mean over {args.seeds} draws")
    print("| set | images/class | shipped rule: familiar | shipped rule: other sets | bound: other sets at 1 % familiar |")
    print("|---|---|---|---|---|")
    for name in SETS:
        others = np.concatenate([plain[o] for o in SETS if o != name])
        for size in args.sizes.split(","):
            cells = []
            for seed in range(args.seeds):
                train, test = draw(data[name], None if size == "all" else int(size), seed)
                scorer = fit_knn(plain[name][train], seed=seed)
                familiar, other = scorer.score(plain[name][test]), scorer.score(others)
                bound = np.quantile(familiar, 1 - FAMILIAR_CEILING)
                cells.append(((familiar > scorer.threshold).mean(), (other > scorer.threshold).mean(),
                              (other > bound).mean()))
            mean = np.mean(cells, axis=0) * 100
            print(f"| {name} | {size} | {mean[0]:.1f} % | {mean[1]:.1f} % | {mean[2]:.1f} % |", flush=True)


if __name__ == "__main__":
    main()
