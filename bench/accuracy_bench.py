"""Graft's default job against plain probes on four domains, per images per class, over seeded draws.

For each set of ../shared/datasets (hymenoptera, flowers, trash, rps), each size (10, 20, 50 images per class and
all of the train pool) and each seed (the draws of bench/domain_features.py: hymenoptera's val/ is its test split,
the other sets hold out 30 % of each class per seed; the test images are never seen by either side), it
- trains Graft's default job (TrainSpec(): backbone `auto`, every default) on the drawn images and classifies the
  test images through the predict path exactly as a user gets them (Predictor.predict_files, default options):
  accuracy counting `unknown` as wrong, accuracy of the class chosen (the top class, `unknown` or not), the
  `unknown` rate on these familiar images, and the share of 100 images from each other set answered `unknown`;
- fits the plain probes: scikit-learn's LogisticRegression() on the frozen Lite0 / Lite1 / Lite2 pooled features of
  the same images and their mirrors, scored on the plain test features and on plain + mirrored averaged.
Per cell it prints mean ± spread (population std over draws) and writes the table into docs/accuracy.md between
the markers. Per-draw results are kept in a JSON file (--runs), so an interrupted run resumes where it stopped.

Run: python bench/accuracy_bench.py [--sets flowers,...] [--sizes 10,20,50,all] [--seeds 3] [--no-doc]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from graft.worker.core.predict import Predictor
from graft.worker.core.spec import TrainSpec
from graft.worker.core.train import fit
from graft.shared.params import UNKNOWN

sys.path.insert(0, str(Path(__file__).resolve().parent))
from domain_features import LITES, SETS, SetImages, draw, features, images  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "accuracy.md"
START, END = "<!-- accuracy_bench:start -->", "<!-- accuracy_bench:end -->"
RUNS = Path.home() / ".cache" / "graft-bench" / "accuracy-runs.json"
OTHERS_PER_SET = 100
HEADER = ("| set | images/class | Graft (`unknown` = wrong) | Graft, class chosen | `unknown` on familiar | other sets "
          "flagged | probe Lite0 | probe Lite1 | probe Lite2 | best probe, mirrored test | Graft − best probe | "
          "backbone | job s |")


def _probes(data: SetImages, train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    out = {}
    y, yt = data.labels[train], data.labels[test]
    for backbone in LITES:
        plain, mirror = features(data, backbone)
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lr = LogisticRegression(max_iter=5000).fit(np.concatenate([plain[train], mirror[train]]),
                                                       np.concatenate([y, y]))
        p = lr.predict_proba(plain[test])
        out[backbone] = float((p.argmax(1) == yt).mean())
        out[backbone + "+mirror"] = float((((p + lr.predict_proba(mirror[test])) / 2).argmax(1) == yt).mean())
    return out


def _others(name: str, seed: int) -> list[tuple[str, Path]]:
    rng = np.random.default_rng(seed)
    files = []
    for other in SETS:
        if other != name:
            paths = images(other).paths
            files += [(f"{other}/{i}", paths[i]) for i in rng.choice(len(paths), OTHERS_PER_SET, replace=False)]
    return files


def _graft(data: SetImages, train: np.ndarray, test: np.ndarray, seed: int) -> dict[str, float | str]:
    work = Path(tempfile.mkdtemp(prefix="graft-acc-"))
    try:
        for i in train:
            folder = work / "data" / data.classes[data.labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}{data.paths[i].suffix}").symlink_to(data.paths[i])
        t0 = time.monotonic()
        result = fit(work / "data", TrainSpec(), work / "job", work / "model")
        seconds = time.monotonic() - t0
        predictor = Predictor.from_artifact(result.model_path)
        rows = predictor.predict_files([(str(i), data.paths[i]) for i in test])
        truth = [data.classes[data.labels[i]] for i in test]
        others = predictor.predict_files(_others(data.name, seed))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"acc": float(np.mean([r["label"] == t for r, t in zip(rows, truth)])),
            "chosen_acc": float(np.mean([r["top_k"][0]["label"] == t for r, t in zip(rows, truth)])),
            "unknown": float(np.mean([r["label"] == UNKNOWN for r in rows])),
            "others_flagged": float(np.mean([r["label"] == UNKNOWN for r in others])),
            "backbone": result.backbone, "seconds": seconds, "selected": str(result.metrics.get("selected"))}


def _ms(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    v = np.asarray(values) * scale
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def _row(name: str, size: str, draws: list[dict]) -> str:
    g = [d["graft"] for d in draws]
    p = [d["probes"] for d in draws]
    best = max(LITES, key=lambda b: np.mean([x[b] for x in p]))
    best_mirror = max(np.mean([x[b + "+mirror"] for x in p]) for b in LITES)
    gap = np.mean([x["acc"] for x in g]) - max(np.mean([x[b] for x in p]) for b in LITES)
    backbones = sorted({x["backbone"].replace("efficientnet_", "") for x in g})
    return (f"| {name} | {size} ({draws[0]['train_images']} → {draws[0]['test_images']}) | {_ms([x['acc'] for x in g])} "
            f"| {_ms([x['chosen_acc'] for x in g])} | {_ms([x['unknown'] for x in g], 100, 1)} % "
            f"| {_ms([x['others_flagged'] for x in g], 100, 1)} % | "
            + " | ".join(_ms([x[b] for x in p]) + (" **best**" if b == best else "") for b in LITES)
            + f" | {best_mirror:.3f} | {gap:+.3f} | {', '.join(backbones)} | {np.mean([x['seconds'] for x in g]):.0f} |")


def _write_doc(rows: list[str], note: str) -> None:
    text = DOC.read_text()
    before, _, rest = text.partition(START)
    _, _, after = rest.partition(END)
    DOC.write_text(before + "\n".join([START, note, "", HEADER, "|" + "---|" * (HEADER.count("|") - 1), *rows, END])
                   + after)


def main() -> None:
    """Run every (set, size, seed) not yet in --runs, then print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--sizes", default="10,20,50,all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    runs = json.loads(args.runs.read_text()) if args.runs.is_file() else {}
    rows = []
    for name in args.sets.split(","):
        data = images(name)
        for size in args.sizes.split(","):
            draws = []
            for seed in range(args.seeds):
                key = f"{name}/{size}/{seed}"
                if key not in runs:
                    train, test = draw(data, None if size == "all" else int(size), seed)
                    runs[key] = {"graft": _graft(data, train, test, seed), "probes": _probes(data, train, test),
                                 "train_images": len(train), "test_images": len(test), "commit": commit,
                                 "load": os.getloadavg()[0]}
                    args.runs.parent.mkdir(parents=True, exist_ok=True)
                    args.runs.write_text(json.dumps(runs, indent=1))
                    print("#", key, json.dumps(runs[key]), flush=True)
                draws.append(runs[key])
            rows.append(_row(name, size, draws))
            print(rows[-1], flush=True)
    commits = sorted({runs[k]["commit"] for k in runs})
    note = (f"Measured by `python bench/accuracy_bench.py`, {args.seeds} draws a cell, at commit(s) {', '.join(commits)}, "
            f"finished {time.strftime('%Y-%m-%d %H:%M')} UTC, {torch.get_num_threads()} torch threads on the 2-core "
            "machine; ± is the spread (population standard deviation) over draws.")
    print(HEADER)
    print("\n".join(rows))
    if not args.no_doc:
        _write_doc(rows, note)


if __name__ == "__main__":
    main()
