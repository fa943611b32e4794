"""The trust columns of bench/backbone_accuracy.py, measured on held-out data for one row's model: calibration error
on hymenoptera's val/ before and after the model's stored temperature, "none of the above" rates against the
top-softmax baseline, and the label audit on 5 % flipped labels of the row's training images.

Also the per-backbone feature cache the bench and bench/calibration_rule.py share: the frozen ImageNet trunk's
pooled features of every train/ and val/ image, plain and mirrored (they depend on neither labels nor the draw).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from graft.worker.core.audit import audit_labels
from graft.worker.core.calibration import ece, nll, softmax
from graft.worker.core.images import decode_image
from graft.worker.core.predict import Predictor
from graft.shared.params import UNKNOWN

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.ood_images and tests.trust_real: the same generator and rates as the tests

from tests.ood_images import write_ood_images  # noqa: E402
from tests.trust_real import flagged_at  # noqa: E402

CACHE = Path.home() / ".cache" / "graft-bench"
FLIP_RATE = 0.05


def cached_features(backbone: str, names: Sequence[str], compute: Any) -> np.ndarray:
    """compute() once per backbone and list of image names, kept as .npy under CACHE (features need no labels)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path, listed = CACHE / f"{backbone}.npy", CACHE / f"{backbone}.names"
    if path.is_file() and listed.is_file() and listed.read_text().splitlines() == list(names):
        return np.load(path)
    feats = compute()
    np.save(path, feats)
    listed.write_text("\n".join(names) + "\n")
    return feats


def ood_files(folder: Path) -> list[tuple[str, Path]]:
    """tests/ood_images.py's unfamiliar images (same seed as the slow tests), written once into folder."""
    return [(p.name, p) for p in write_ood_images(folder)]


def _outputs(predictor: Predictor, paths: Sequence[Path]) -> np.ndarray:
    """Logits through the predict path's runner (calibration is applied after: Trust.probabilities)."""
    out = []
    for i in range(0, len(paths), 32):
        images = [decode_image(p, predictor.prep.resize, None) for p in paths[i : i + 32]]
        out.append(predictor.outputs(images)[0])
    return np.concatenate(out)


def calibration_cells(predictor: Predictor, val_paths: Sequence[Path], val_y: np.ndarray) -> dict[str, float]:
    """ECE and NLL on val/ of softmax(logits) and of the model's calibrated probabilities."""
    logits = _outputs(predictor, val_paths)
    plain, calibrated = softmax(logits), predictor.trust.probabilities(logits)
    t = predictor.trust.temperature
    return {"temperature": t, "ece_before": ece(plain, val_y), "ece_after": ece(calibrated, val_y),
            "nll_before": nll(logits, val_y), "nll_after": nll(logits, val_y, t)}


def ood_cells(predictor: Predictor, val_rows: list[dict], unfamiliar: list[tuple[str, Path]]) -> dict[str, float]:
    """Share of unfamiliar images and of val/ flagged `unknown`; the top-softmax baseline at the same false flags.

    val_rows: the model's rows for val/, predicted with reject_ood off (their ood_score is still there).
    """
    rows = predictor.predict_files(unfamiliar)
    ours_ood = float(np.mean([r["label"] == UNKNOWN for r in rows]))
    # val_rows were predicted with reject_ood off (for accuracy): flagged is what Trust.judge would have said
    ours_val = float(np.mean([r["ood_score"] > predictor.trust.scorer.threshold for r in val_rows]))
    val_conf = np.array([r["confidence"] for r in val_rows], dtype=float)
    ood_conf = np.array([r["confidence"] for r in rows], dtype=float)
    # The baseline flags below a confidence: the best such threshold that flags no more of val/ than ood_score did.
    base = flagged_at(-val_conf, -ood_conf, ours_val)
    return {"flagged": ours_ood, "false": ours_val, "baseline": base, "unfamiliar": len(rows), "val": len(val_rows)}


def audit_cells(features: np.ndarray, labels: np.ndarray, classes: Sequence[str], seed: int) -> dict[str, Any]:
    """Flip FLIP_RATE of labels (seeded; at least one), run the job's label audit on these features, score it."""
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), max(1, round(FLIP_RATE * len(labels))), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (noisy[flipped] + 1) % len(classes)
    paths = [str(i) for i in range(len(labels))]
    audit = audit_labels(features, noisy, paths, list(classes), seed=0)
    found = {int(s["path"]) for s in audit["suspects"]} if audit else set()
    hits = len(found & {int(i) for i in flipped})
    return {"flipped": len(flipped), "listed": len(found), "found": hits}


def format_cells(cal: dict[str, float], ood: dict[str, float], audit: dict[str, Any]) -> list[str]:
    """The three table cells."""
    f, n, hits = audit["flipped"], audit["listed"], audit["found"]
    precision = f"{hits / n:.2f}" if n else "—"
    return [f"{cal['ece_before']:.3f} → {cal['ece_after']:.3f} (T {cal['temperature']:.2f})",
            f"{ood['flagged']:.1%} / {ood['false']:.1%} (top softmax {ood['baseline']:.1%})",
            f"{precision} ({hits}/{n}) / {hits / f:.2f} ({hits}/{f})"]
