"""Real-data measurements of calibration, ood_score and the label audit on hymenoptera, shared by
tests/service/test_trust_accuracy.py (asserts the targets) and bench/trust_bench.py (prints the figures).

One EfficientNet-Lite0 model (linear mode: its trunk is ImageNet's, so its features are the training cache's) is
trained on hymenoptera's train/ alone; its val/ is the held-out set of familiar images, tests/ood_images.py the
unfamiliar ones.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graft.worker.core.audit import audit_labels
from graft.worker.core.images import decode_image
from graft.worker.core.predict import Predictor
from graft.worker.core.train import TrainSpec, fit
from tests.ood_images import write_ood_images

CLASSES = ("ants", "bees")


@dataclass
class Scored:
    """A trained model's metrics and its outputs on train, held-out val and unfamiliar images."""

    metrics: dict
    threshold: float  # the model's own ood threshold
    train_features: np.ndarray
    train_labels: np.ndarray
    train_paths: list[str]
    val_features: np.ndarray
    val_labels: np.ndarray
    val_paths: list[str]
    val_ood: np.ndarray  # ood_score of held-out ants and bees
    val_msp: np.ndarray  # top calibrated softmax probability
    ood_ood: np.ndarray
    ood_msp: np.ndarray
    val_rows: list[dict]
    ood_rows: list[dict]


def _files(folder: Path) -> tuple[list[Path], np.ndarray]:
    paths = [p for c in CLASSES for p in sorted((folder / c).iterdir())]
    return paths, np.array([CLASSES.index(p.parent.name) for p in paths])


def _rel(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _outputs(predictor: Predictor, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    logits, feats = [], []
    for i in range(0, len(paths), 32):
        lo, fe = predictor.outputs([decode_image(p, predictor.prep.resize, None) for p in paths[i : i + 32]])
        logits.append(lo)
        feats.append(fe)
    return np.concatenate(logits), np.concatenate(feats)


def train_and_score(data: Path, work: Path, epochs: int = 6) -> Scored:
    """Train on data/train (copied as a plain class-folder dataset), then score data/val and unfamiliar images."""
    train_dir = work / "train"
    shutil.copytree(data / "train", train_dir)
    spec = TrainSpec(backbone="efficientnet_lite0", mode="linear", epochs=epochs, views=1, val_split=0.2, seed=0)
    result = fit(train_dir, spec, work / "job", work / "model")
    predictor = Predictor.from_artifact(result.model_path)
    train_paths, train_labels = _files(train_dir)
    val_paths, val_labels = _files(data / "val")
    ood_paths = write_ood_images(work / "ood")
    train_f = _outputs(predictor, train_paths)[1]
    val_f = _outputs(predictor, val_paths)[1]
    # The rows are the real prediction path; their confidence is the calibrated top softmax probability.
    val_rows = predictor.predict_files([(_rel(p), p) for p in val_paths])
    ood_rows = predictor.predict_files([(p.name, p) for p in ood_paths])

    def column(rows: list[dict], key: str) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=float)

    return Scored(
        metrics=result.metrics, threshold=predictor.trust.scorer.threshold,
        train_features=train_f, train_labels=train_labels, train_paths=[_rel(p) for p in train_paths],
        val_features=val_f, val_labels=val_labels, val_paths=[_rel(p) for p in val_paths],
        val_ood=column(val_rows, "ood_score"), val_msp=column(val_rows, "confidence"),
        ood_ood=column(ood_rows, "ood_score"), ood_msp=column(ood_rows, "confidence"),
        val_rows=val_rows, ood_rows=ood_rows,
    )


def worst_margin(known_a: np.ndarray, unknown_a: np.ndarray, known_b: np.ndarray, unknown_b: np.ndarray) -> float:
    """Over every threshold of score b: (share of unknowns score a flags at no more false flags) - (b's share).

    Scores flag above the threshold. Never below 0 means a is at least as good as b at every threshold.
    """
    def curve(known: np.ndarray, unknown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cuts = np.unique(np.concatenate([known, unknown, [np.inf], [-np.inf]]))
        return (known[None] > cuts[:, None]).mean(1), (unknown[None] > cuts[:, None]).mean(1)

    false_a, hit_a = curve(known_a, unknown_a)
    false_b, hit_b = curve(known_b, unknown_b)
    return float(min(hit_a[false_a <= f].max() - h for f, h in zip(false_b, hit_b)))


def flagged_at(known: np.ndarray, unknown: np.ndarray, false_rate: float) -> float:
    """Share of unknowns a score flags at its best threshold that flags at most false_rate of the known."""
    cuts = np.unique(np.concatenate([known, unknown, [np.inf]]))
    ok = [(unknown > c).mean() for c in cuts if (known > c).mean() <= false_rate]
    return float(max(ok))


def audit_flipped(scored: Scored, rate: float = 0.05, seed: int = 0) -> dict:
    """Flip rate of train+val labels, audit the features; recall and precision of the suspects."""
    features = np.concatenate([scored.train_features, scored.val_features])
    labels = np.concatenate([scored.train_labels, scored.val_labels])
    paths = [f"train/{p}" for p in scored.train_paths] + [f"val/{p}" for p in scored.val_paths]
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), round(rate * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[flipped] = 1 - noisy[flipped]
    audit = audit_labels(features, noisy, paths, list(CLASSES), seed=0)
    found = {s["path"] for s in audit["suspects"]}
    truth = {paths[i] for i in flipped}
    hits = len(found & truth)
    return {"flipped": len(truth), "listed": len(found), "found": hits, "recall": hits / len(truth),
            "precision": hits / max(1, len(found))}
