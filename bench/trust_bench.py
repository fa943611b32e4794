"""Trust benchmark on hymenoptera: calibration error, "none of the above" against the top-softmax baseline, and the
label audit with 5 % of labels flipped (issue 14, points 3-5). Prints figures; the targets are asserted by
tests/service/test_trust_accuracy.py.

    python bench/trust_bench.py [DATA_DIR] [--seeds 8] [--end-to-end]

--end-to-end also copies DATA_DIR with 5 % of its labels flipped and trains on it, reading the audit the training
job itself reports (metrics["label_audit"]).
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.trust_real: the measurement shared with the slow tests

from tests.trust_real import CLASSES, audit_flipped, flagged_at, train_and_score, worst_margin  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera"


def end_to_end(data: Path, work: Path, rate: float = 0.05, seed: int = 0) -> dict:
    """Copy data with rate of its files moved to the other class folder, train, and score the job's own audit."""
    from graft.worker.core.train import TrainSpec, fit

    copy = work / "flipped"
    shutil.copytree(data, copy)
    files = sorted(p for p in copy.rglob("*") if p.is_file())
    flipped = set()
    for path in random.Random(seed).sample(files, round(rate * len(files))):
        other = CLASSES[1 - CLASSES.index(path.parent.name)]
        target = path.parent.parent / other / path.name
        path.rename(target)
        flipped.add(target.relative_to(copy).as_posix())
    spec = TrainSpec(backbone="efficientnet_lite0", mode="linear", epochs=6, views=1, seed=0)
    audit = fit(copy, spec, work / "flipped-job", work / "flipped-model").metrics["label_audit"]
    found = {s["path"] for s in audit["suspects"]}
    hits = len(found & flipped)
    return {"flipped": len(flipped), "listed": len(found), "found": hits, "recall": hits / len(flipped),
            "precision": hits / max(1, len(found))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, default=8, help="label flips audited (different 5 %% each)")
    parser.add_argument("--end-to-end", action="store_true", help="also train on a flipped copy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trust-bench-") as tmp:
        t0 = time.monotonic()
        s = train_and_score(args.data, Path(tmp))
        print(f"trained and scored in {time.monotonic() - t0:.0f} s (EfficientNet-Lite0, linear, train/ only)")
        c = s.metrics["calibration"]
        print(f"calibration: temperature {c['temperature']:.3f} ({c['why']}), ECE {c['ece_before']:.4f} -> "
              f"{c['ece_after']:.4f} on {c['images']} images: {c['source']}")
        n_val, n_ood = len(s.val_rows), len(s.ood_rows)
        ours_val = np.mean([r["label"] == "unknown" for r in s.val_rows])
        ours_ood = np.mean([r["label"] == "unknown" for r in s.ood_rows])
        print(f"ood: {n_ood} unfamiliar images, {n_val} held-out ants/bees; threshold {s.threshold:.4f} "
              f"(kNN k={s.metrics['ood']['k']}; {s.metrics['ood']['rule']})")
        print(f"  ood_score at the model's threshold: unfamiliar flagged {ours_ood:.3f}, ants/bees flagged {ours_val:.3f}")
        for rate in (0.01, 0.02, 0.05):
            print(f"  at <= {rate:.0%} ants/bees flagged: ood_score flags {flagged_at(s.val_ood, s.ood_ood, rate):.3f}, "
                  f"top softmax flags {flagged_at(-s.val_msp, -s.ood_msp, rate):.3f}")
        print(f"  worst margin of ood_score over top softmax, over every softmax threshold: "
              f"{worst_margin(s.val_ood, s.ood_ood, -s.val_msp, -s.ood_msp):+.3f} (>= 0: never worse)")
        runs = [audit_flipped(s, 0.05, seed) for seed in range(args.seeds)]
        for seed, r in enumerate(runs):
            print(f"audit seed {seed}: {r['found']}/{r['flipped']} flipped found among {r['listed']} listed: "
                  f"recall {r['recall']:.2f} precision {r['precision']:.2f}")
        rec, pre = np.array([r["recall"] for r in runs]), np.array([r["precision"] for r in runs])
        print(f"audit over {len(runs)} flips: recall mean {rec.mean():.2f} (min {rec.min():.2f}), "
              f"precision mean {pre.mean():.2f} (min {pre.min():.2f})")
        if args.end_to_end:
            r = end_to_end(args.data, Path(tmp))
            print(f"audit end to end (training job on a flipped copy of train/ and val/): {r['found']}/{r['flipped']} "
                  f"found among {r['listed']} listed: recall {r['recall']:.2f} precision {r['precision']:.2f}")


if __name__ == "__main__":
    main()
