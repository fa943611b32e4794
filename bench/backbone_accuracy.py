"""Graft's default training job against a plain logistic-regression probe, per backbone and images per class.

For each EfficientNet-Lite and 10 / 20 / all images per class of hymenoptera's train split (a fixed seeded
draw), it trains Graft's default job (only the backbone named) on those images, and fits scikit-learn's
LogisticRegression (defaults) on the same backbone's pooled features of the same images and their mirror
images. Both are scored on hymenoptera's val split (never seen by either): Graft with and without
test-time augmentation (`tta`), the probe on plain val features and on plain + mirrored val features averaged.
The trust columns (bench/accuracy_trust.py), each on held-out data: the expected calibration error on val/ before
and after the model's stored temperature; the share of tests/ood_images.py's unfamiliar images and of val/ flagged
`unknown`, beside the top-softmax baseline's share at the same false flags; the label audit's precision and recall
on the row's training images' frozen ImageNet features with 5 % of their labels flipped.
Prints the table and writes it into docs/accuracy.md between the bench markers.

Run: python bench/backbone_accuracy.py [--backbones efficientnet_lite0,...] [--sizes 10,20,all] [--no-doc]
Each backbone's frozen-trunk features are cached under ~/.cache/graft-bench (bench/accuracy_trust.py): with them,
all nine rows took 11 minutes on the shared 2-core machine (2026-11-29).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from graft.worker.core.backbones import BACKBONES, build_model
from graft.worker.core.dataset import find_files
from graft.worker.core.images import decode_image
from graft.worker.core.predict import Predictor, crop_batch
from graft.worker.core.runtimes import Normalized, make_runner
from graft.worker.core.spec import TrainSpec
from graft.worker.core.train import fit
from graft.worker.core.transforms import Preprocessing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_trust import (audit_cells, cached_features, calibration_cells, format_cells,  # noqa: E402
                            ood_cells, ood_files)  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera"
DOC = ROOT / "docs" / "accuracy.md"
START, END = "<!-- backbone_accuracy:start -->", "<!-- backbone_accuracy:end -->"
LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
HEADER = ("| backbone | images/class | Graft | Graft, `tta` | probe | probe, mirrored test | Graft's estimate "
          "| chosen | job s | `tta` predict time | ECE before → after | OOD flagged / false flags | audit precision / recall |")


def _draw(files: dict[str, list[Path]], per_class: int | None, seed: int) -> dict[str, list[Path]]:
    rng = random.Random(seed)
    out = {}
    for name, paths in files.items():
        paths = sorted(paths)
        rng.shuffle(paths)
        out[name] = paths if per_class is None else paths[:per_class]
    return out


def _link_folder(files: dict[str, list[Path]], folder: Path) -> Path:
    for name, paths in files.items():
        (folder / name).mkdir(parents=True)
        for path in paths:
            (folder / name / path.name).symlink_to(path)
    return folder


def _crops(paths: list[Path], prep: Preprocessing) -> np.ndarray:
    return crop_batch([decode_image(p, prep.resize) for p in paths], prep)


def _features(backbone: str, crops: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Pooled features of uint8 crops through the ImageNet trunk (OpenVINO, as predict jobs run)."""
    model = build_model(backbone, 2, pretrained=True).eval()
    model.head = nn.Identity()
    runner = make_runner("openvino", Normalized(model, prep.mean, prep.std), prep.crop)
    return np.concatenate([runner(crops[i : i + 32]) for i in range(0, len(crops), 32)])


def _probe(train_x: np.ndarray, train_y: np.ndarray, val_plain: np.ndarray, val_mirror: np.ndarray,
           val_y: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(max_iter=5000).fit(train_x, train_y)
    plain = lr.predict_proba(val_plain)
    both = (plain + lr.predict_proba(val_mirror)) / 2
    return float((plain.argmax(1) == val_y).mean()), float((both.argmax(1) == val_y).mean())


def _graft(folder: Path, backbone: str, work: Path, val_files: list[tuple[str, Path]], val_y: np.ndarray,
           classes: list[str], unfamiliar: list[tuple[str, Path]]) -> dict:
    t0 = time.monotonic()
    result = fit(folder, TrainSpec(backbone=backbone), work / "job", work / "model")
    seconds = time.monotonic() - t0
    predictor = Predictor.from_artifact(result.model_path)
    scores, times, rows = {}, {}, {}
    for tta in (False, True):
        t1 = time.monotonic()
        # reject_ood off: accuracy counts the class chosen, not whether the image also looked unfamiliar
        rows[tta] = predictor.predict_files(val_files, tta=tta, reject_ood=False)
        times[tta] = time.monotonic() - t1
        scores[tta] = float(np.mean([classes.index(r["label"]) == y for r, y in zip(rows[tta], val_y)]))
    m = result.metrics
    calibration = calibration_cells(predictor, [p for _, p in val_files], val_y)
    ood = ood_cells(predictor, rows[False], unfamiliar)
    return {"acc": scores[False], "tta_acc": scores[True], "tta_time_ratio": times[True] / times[False],
            "estimate": f"{m['estimated_acc']:.3f} ({m['estimate']})",
            "chosen": f"{m['selected']} (epochs {m['epochs_val_acc']:.3f}, head {m.get('head_val_acc', 0):.3f}, "
                      f"C {m.get('head_C')}, {m.get('head_views')} views){', refit' if m['refit'] else ''}",
            "seconds": seconds, "calibration": calibration, "ood": ood, "job_calibration": m.get("calibration")}


def _key(row: str) -> tuple[str, str]:
    cells = [c.strip() for c in row.strip("|").split("|")]
    return cells[0], cells[1].split(" ")[0]


def _write_doc(rows: list[str], note: str) -> None:
    """Put rows into the table between the markers, replacing earlier rows of the same backbone and size."""
    text = DOC.read_text() if DOC.is_file() else f"# Accuracy\n\n{START}\n{END}\n"
    before, _, rest = text.partition(START)
    old, _, after = rest.partition(END)
    kept = {_key(r): r for r in old.splitlines() if r.startswith("| efficientnet")}
    notes = [line for line in old.splitlines() if line.startswith("Measured")]
    kept.update({_key(r): r for r in rows})
    order = sorted(kept, key=lambda k: (k[0], 10**6 if k[1] == "all" else int(k[1])))
    notes = list(dict.fromkeys([*notes, note]))
    block = "\n".join([START, *notes, "", HEADER, HEADER_RULE, *(kept[k] for k in order), END])
    DOC.write_text(before + block + after)


HEADER_RULE = "|" + "---|" * (HEADER.count("|") - 1)


def main() -> None:
    """Run every (backbone, size) row and write the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--backbones", default=",".join(LITES))
    parser.add_argument("--sizes", default="10,20,all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/accuracy.md alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    classes, train_files, val_files = find_files(args.data)
    assert val_files is not None, "the data folder needs train/ and val/"
    val_list = [(f"{c}/{p.name}", p) for c in classes for p in sorted(val_files[c])]
    val_y = np.array([classes.index(name.split("/")[0]) for name, _ in val_list])
    load = os.getloadavg()[0]
    note = (f"Measured {time.strftime('%Y-%m-%d %H:%M')} UTC by `python bench/backbone_accuracy.py --backbones "
            f"{args.backbones} --sizes {args.sizes}`, seed {args.seed}, "
            f"{torch.get_num_threads()} torch threads, load average {load:.1f} at the start (the machine was shared: "
            "job seconds are only comparable within this table).")
    rows: list[str] = []
    ood_dir = Path(tempfile.mkdtemp(prefix="graft-acc-ood-"))
    unfamiliar = ood_files(ood_dir)
    print(HEADER, HEADER_RULE, sep="\n", flush=True)
    for backbone in args.backbones.split(","):
        info = BACKBONES[backbone]
        prep = Preprocessing.for_size(info.image_size, info.mean, info.std)
        all_train = _draw(train_files, None, args.seed)
        ordered = [(c, p) for c in classes for p in all_train[c]]
        names = [str(p) for _, p in ordered] + [str(p) for _, p in val_list]

        def compute() -> np.ndarray:
            crops = _crops([p for _, p in ordered], prep)
            val_crops = _crops([p for _, p in val_list], prep)
            return _features(backbone, np.concatenate([crops, crops[:, :, ::-1], val_crops, val_crops[:, :, ::-1]]),
                             prep)

        feats = cached_features(backbone, names, compute)
        n, m = len(ordered), len(val_list)
        plain, mirror, val_plain, val_mirror = feats[:n], feats[n : 2 * n], feats[2 * n : 2 * n + m], feats[2 * n + m :]
        index = {p: i for i, (_, p) in enumerate(ordered)}
        for size in args.sizes.split(","):
            per_class = None if size == "all" else int(size)
            drawn = _draw(train_files, per_class, args.seed)
            idx = np.array([index[p] for c in classes for p in drawn[c]])
            y = np.array([classes.index(c) for c in classes for _ in drawn[c]])
            probe, probe_tta = _probe(np.concatenate([plain[idx], mirror[idx]]), np.concatenate([y, y]),
                                      val_plain, val_mirror, val_y)
            audit = audit_cells(plain[idx], y, classes, args.seed)
            work = Path(tempfile.mkdtemp(prefix="graft-acc-"))
            try:
                g = _graft(_link_folder(drawn, work / "data"), backbone, work, val_list, val_y, classes, unfamiliar)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            shown = "all" if per_class is None else str(per_class)
            trust = " | ".join(format_cells(g["calibration"], g["ood"], audit))
            row = (f"| {backbone} | {shown} ({len(idx)}) | {g['acc']:.3f} | {g['tta_acc']:.3f} | {probe:.3f} | "
                   f"{probe_tta:.3f} | {g['estimate']} | {g['chosen']} | {g['seconds']:.0f} | ×{g['tta_time_ratio']:.2f} "
                   f"| {trust} |")
            rows.append(row)
            print(row, flush=True)
            details = {"row": [backbone, shown], "calibration": g["calibration"], "ood": g["ood"], "audit": audit,
                       "job_calibration": g["job_calibration"]}
            print("# details", json.dumps(details, default=float), flush=True)
            if not args.no_doc:
                _write_doc(rows, note)
    shutil.rmtree(ood_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
