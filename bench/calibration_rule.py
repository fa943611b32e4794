"""Which temperature rule calibrates best on held-out data. Replays a default job's linear head on cached features
(bench/accuracy_trust.py's cache, filled by bench/backbone_accuracy.py): per backbone, per 10 / 20 / all images per
class, per draw seed, it draws the images, splits off 20 % per class for validation, fits the CV-regularised
logistic head on the rest (plain + mirror views, as worker/core/refit.py), refits it on every drawn image (C chosen
again), and scores each rule's temperature on the refit head's logits for hymenoptera's val/ (153 images, never
drawn): ECE and NLL. Rules:
- one: T = 1;  fitted: the NLL-fitted T on the holdout head's validation logits (Graft before this rule);
- cv rule: that T kept only when it lowers the 5-fold held-out NLL (calibration.choose_temperature), else 1;
- oof fitted / oof cv rule: the same on the refit head's out-of-fold logits over every drawn image at its own C
  (what a job with a refit linear head does now: refit.Outcome.calibration_set).

Run: python bench/calibration_rule.py [--backbones efficientnet_lite0,...] [--draws 8]
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

from graft.worker.core.calibration import choose_temperature, ece, fit_temperature, nll, softmax
from graft.worker.core.dataset import find_files
from graft.worker.core.selection import LinearHead, best_c, cross_validate_head, fit_head, views_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_trust import CACHE  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"


def _head(plain: np.ndarray, mirror: np.ndarray, y: np.ndarray, seed: int) -> LinearHead:
    x, yy, groups, is_plain = views_dataset((torch.from_numpy(np.stack([plain, mirror])), list(y)))
    cv = cross_validate_head(x, yy, groups, is_plain, False, seed)
    return fit_head(x, yy, best_c(cv), 2, False, cv)


def replay(feats: np.ndarray, ordered: list[tuple[int, str]], n_val: int, per_class: int | None,
           draw: int) -> tuple[dict[str, float], np.ndarray]:
    """One simulated job: rule -> temperature, and the refit head's logits for val/."""
    n = len(ordered)
    plain, mirror, val_plain = feats[:n], feats[n : 2 * n], feats[2 * n : 2 * n + n_val]
    rng = random.Random(draw)
    fit_idx, hold_idx = [], []
    for c in (0, 1):
        mine = [i for i, (label, _) in enumerate(ordered) if label == c]
        rng.shuffle(mine)
        mine = mine if per_class is None else mine[:per_class]
        k = max(1, round(0.2 * len(mine)))
        hold_idx += mine[:k]
        fit_idx += mine[k:]
    labels = np.array([label for label, _ in ordered])
    fit_idx, hold_idx = np.array(fit_idx), np.array(hold_idx)
    held = _head(plain[fit_idx], mirror[fit_idx], labels[fit_idx], draw)
    val_logits = held.logits(torch.from_numpy(plain[hold_idx])).numpy()
    every = np.concatenate([fit_idx, hold_idx])
    final = _head(plain[every], mirror[every], labels[every], draw)
    test_logits = final.logits(torch.from_numpy(val_plain)).numpy()
    oof = _out_of_fold(plain[every], mirror[every], labels[every], final.C, draw)
    return {"one": 1.0, "fitted": fit_temperature(val_logits, labels[hold_idx]),
            "cv rule": choose_temperature(val_logits, labels[hold_idx])[0],
            "oof fitted": fit_temperature(oof, labels[every]),
            "oof cv rule": choose_temperature(oof, labels[every])[0]}, test_logits


def _out_of_fold(plain: np.ndarray, mirror: np.ndarray, y: np.ndarray, c: float, seed: int) -> np.ndarray:
    """Logits of every image from the head at C fitted on the other folds (plain + mirror views)."""
    from sklearn.model_selection import StratifiedKFold

    out = np.zeros((len(y), 2))
    for fit_rows, held in StratifiedKFold(min(5, int(np.bincount(y).min())), shuffle=True,
                                          random_state=seed).split(plain, y):
        x, yy, groups, is_plain = views_dataset((torch.from_numpy(np.stack([plain[fit_rows], mirror[fit_rows]])),
                                                 list(y[fit_rows])))
        head = fit_head(x, yy, c, 2, False, {})
        out[held] = head.logits(torch.from_numpy(plain[held])).numpy()
    return out


def main() -> None:
    """Print, per backbone and size, each rule's mean ECE and NLL on val/ over the draws."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
    parser.add_argument("--sizes", default="10,20,all")
    parser.add_argument("--draws", type=int, default=8)
    args = parser.parse_args()
    classes, train_files, val_files = find_files(DATA)
    val_y = np.array([c for c, name in enumerate(classes) for _ in val_files[name]])
    for backbone in args.backbones.split(","):
        names = (CACHE / f"{backbone}.names").read_text().splitlines()
        feats = np.load(CACHE / f"{backbone}.npy")
        n_val = len(val_y)
        n = (len(feats) - 2 * n_val) // 2
        ordered = [(classes.index(Path(p).parent.name), p) for p in names[:n]]
        for size in args.sizes.split(","):
            per_class = None if size == "all" else int(size)
            scores: dict[str, list[tuple[float, float, float]]] = {}
            for draw in range(args.draws):
                temps, logits = replay(feats, ordered, n_val, per_class, draw)
                for rule, t in temps.items():
                    scores.setdefault(rule, []).append((t, ece(softmax(logits, t), val_y), nll(logits, val_y, t)))
            cells = [f"{rule}: T {np.median([s[0] for s in v]):.2f} (median), ECE {np.mean([s[1] for s in v]):.4f}, "
                     f"NLL {np.mean([s[2] for s in v]):.4f}" for rule, v in scores.items()]
            print(f"{backbone} {size}/class, {args.draws} draws | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
