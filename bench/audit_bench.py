"""The label audit on four domains: with 5 % of labels flipped, how many it finds (recall) and how many it lists
are flipped (precision), per set, size and backbone, mean over seeded draws.

For each set of ../shared/datasets, each size (50 images per class and all of the train pool) and each seed
(bench/domain_features.py's draws), 5 % of the drawn images (at least one) get another class, chosen at random,
and `worker/core/audit.py:audit_labels` runs on the frozen trunk's pooled features (what inspection computes;
the features do not depend on the labels, so this is what the report of the flipped folder would list). With
--grid it tries other constants (C and MIN_CONFIDENCE) on the same flips, the way the shipped ones were chosen.

Run: python bench/audit_bench.py [--backbones efficientnet_lite0,efficientnet_lite2] [--seeds 3]
     [--grid 0.03,0.1,0.3,1:0,0.5,0.7,0.8]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from graft.worker.core import audit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from domain_features import SETS, SetImages, draw, features, images  # noqa: E402

FLIPPED = 0.05


def flip(data: SetImages, train: np.ndarray, seed: int) -> tuple[np.ndarray, set[int]]:
    """The drawn images' labels with FLIPPED of them (at least one) moved to another class, and which ones."""
    rng = np.random.default_rng(100 + seed)
    labels = data.labels[train].copy()
    k = len(data.classes)
    rows = rng.choice(len(labels), max(1, round(FLIPPED * len(labels))), replace=False)
    labels[rows] = (labels[rows] + rng.integers(1, k, len(rows))) % k
    return labels, set(rows.tolist())


def scores(found: set[int], flipped: set[int]) -> tuple[float, float]:
    """(precision, recall); precision 1 when nothing is listed."""
    hit = len(found & flipped)
    return hit / max(1, len(found)), hit / len(flipped)


def main() -> None:
    """Print precision / recall per cell for the shipped constants (or each pair of --grid)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite2")
    parser.add_argument("--sizes", default="50,all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--grid", default=f"{audit.C}:{audit.MIN_CONFIDENCE}")
    args = parser.parse_args()
    cs, confidences = ([float(v) for v in part.split(",")] for part in args.grid.split(":"))
    data = {name: images(name) for name in SETS}
    cells: dict[tuple, list[tuple[float, float]]] = {}
    for backbone in args.backbones.split(","):
        for name in SETS:
            plain = features(data[name], backbone)[0]
            for size in args.sizes.split(","):
                for seed in range(args.seeds):
                    train, _ = draw(data[name], None if size == "all" else int(size), seed)
                    labels, flipped = flip(data[name], train, seed)
                    for c in cs:
                        audit.C = c
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            probs, ranked = audit.ranked_issues(plain[train].astype(np.float64), labels,
                                                                len(data[name].classes), seed)
                        for confidence in confidences:
                            found = {int(i) for i in audit.confident(ranked, probs, labels, confidence)}
                            cells.setdefault((backbone, c, confidence, name, size), []).append(scores(found, flipped))
    print(f"precision / recall with {FLIPPED:.0%} of labels flipped, mean over {args.seeds} draws")
    print("| backbone | C | min confidence | " + " | ".join(f"{n} {s}" for n in SETS for s in args.sizes.split(","))
          + " | worst |")
    print("|---" * (4 + len(SETS) * len(args.sizes.split(","))) + "|")
    for backbone in args.backbones.split(","):
        for c in cs:
            for confidence in confidences:
                means = [np.mean(cells[(backbone, c, confidence, n, s)], axis=0)
                         for n in SETS for s in args.sizes.split(",")]
                print(f"| {backbone.removeprefix('efficientnet_')} | {c:g} | {confidence:g} | "
                      + " | ".join(f"{p:.2f} / {r:.2f}" for p, r in means) + f" | {min(min(m) for m in means):.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
