"""Calibration (temperature, ECE, target_precision), the kNN ood_score and `unknown`, the label audit: tiny data."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from graft.shared.serializers import result_row, stored_result
from graft.shared.models import PredictionResult
from graft.worker.core.audit import audit_labels, mislabel_issue
from graft.worker.core.backbones import BACKBONES, build_model
from graft.worker.core.calibration import calibrate, class_thresholds, ece, fit_temperature, precision_curves, softmax
from graft.worker.core.dataset import load_dataset
from graft.worker.core.features import build_cache
from graft.worker.core.ood import fit_knn, threshold_for
from graft.worker.core.predict import Predictor
from graft.worker.core.train import TrainSpec, fit
from graft.worker.core.transforms import Preprocessing
from graft.worker.core.trust import Options, Trust, _pooled, final_features, fit_trust

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _overconfident(n: int = 4000, scale: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits `scale` times too sharp: labels drawn from softmax(true logits), the model reports scale * them."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0, 1.5, (n, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(true)])
    return true * scale, labels


def test_temperature_undoes_overconfidence_and_ece_drops() -> None:
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before, after = ece(softmax(logits), labels), ece(softmax(logits, t), labels)
    assert before > 0.1 and after < 0.03
    report = calibrate(logits, labels, ["a", "b", "c"])
    assert report["ece_after"] < report["ece_before"] and report["nll_after"] < report["nll_before"]
    assert (softmax(logits, t).argmax(1) == softmax(logits).argmax(1)).all()  # labels never change


@pytest.mark.parametrize(("probs", "labels", "expected"), [
    ([[1.0, 0.0], [0.0, 1.0]], [0, 1], 0.0),  # sure and right
    ([[1.0, 0.0], [1.0, 0.0]], [1, 1], 1.0),  # sure and wrong
    ([[0.6, 0.4], [0.6, 0.4]], [0, 1], 0.1),  # 60 % sure, right half the time
])
def test_ece_known_values(probs: list, labels: list, expected: float) -> None:
    assert ece(np.array(probs), labels) == pytest.approx(expected)


def test_target_precision_picks_each_class_threshold() -> None:
    # class a predicted with confidences 0.95 (right), 0.9 (right), 0.8 (wrong), 0.7 (right); class b always right
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.8], [0.1, 0.9]])
    labels = [0, 0, 1, 0, 1, 1]
    curves = precision_curves(probs, labels, ["a", "b"])
    assert curves["a"] == [[0.95, 1.0, 0.3333], [0.9, 1.0, 0.6667], [0.8, 0.6667, 0.6667], [0.7, 0.75, 1.0]]
    assert class_thresholds(curves, 1.0) == {"a": 0.9, "b": 0.8}
    assert class_thresholds(curves, 0.7) == {"a": 0.7, "b": 0.8}
    trust = Trust(curves=curves)
    ranked = [{"label": "a", "confidence": 0.85}]
    row = trust.judge(ranked, None, Options(target_precision=1.0))
    assert row["label"] == "unknown" and "precision 1" in row["reason"]
    assert trust.judge(ranked, None, Options(target_precision=0.7))["label"] == "a"
    assert trust.judge(ranked, None, Options(threshold=0.9))["label"] == "unknown"
    assert trust.judge(ranked, None, Options()) == {"label": "a", "ood_score": None, "reason": None}


def _clusters(n: int = 300, d: int = 16, seed: int = 0) -> np.ndarray:
    centres = np.random.default_rng(99).normal(0, 1, (3, d)) + 4  # the same clusters for every seed
    rng = np.random.default_rng(seed)
    return centres[rng.integers(0, 3, n)] + rng.normal(0, 0.3, (n, d))


def test_knn_scorer_threshold_and_bound() -> None:
    train = _clusters()
    scorer = fit_knn(train, alpha=0.05, max_bank=200)
    assert scorer.bank.shape == (200, 16) and scorer.k == 5
    held_out = _clusters(seed=1)
    assert (scorer.score(held_out) > scorer.threshold).mean() < 0.15
    far = np.random.default_rng(2).normal(0, 1, (50, 16))  # centred at 0, the clusters at +4: other directions
    assert (scorer.score(far) > scorer.threshold).all()
    again = type(scorer).from_meta(scorer.meta(), scorer.bank.astype(np.float16))
    assert np.allclose(again.score(far), scorer.score(far), atol=1e-3)


@pytest.mark.parametrize(("reject", "label", "has_reason"), [(True, "unknown", True), (False, "a", False)])
def test_reject_ood_switch(reject: bool, label: str, has_reason: bool) -> None:
    scorer = fit_knn(_clusters())
    trust = Trust(scorer=scorer)
    far = np.full((1, 16), -3.0)
    score = trust.ood_scores(far, 1)[0]
    assert score is not None and score > scorer.threshold
    row = trust.judge([{"label": "a", "confidence": 0.99}], score, Options(reject_ood=reject))
    assert row["label"] == label and row["ood_score"] == score and (row["reason"] is not None) == has_reason
    near = trust.ood_scores(_clusters(n=1, seed=5), 1)[0]
    assert trust.judge([{"label": "a", "confidence": 0.99}], near, Options())["label"] == "a"


def test_audit_ranks_flipped_labels_first() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    features = rng.normal(0, 1, (120, 8)) + np.where(labels[:, None] == 1, 2.5, -2.5)
    flipped = [3, 17, 70, 101]
    noisy = labels.copy()
    noisy[flipped] = 1 - noisy[flipped]
    paths = [f"{'ab'[y]}/{i}.jpg" for i, y in enumerate(noisy)]
    audit = audit_labels(features, noisy, paths, ["a", "b"])
    found = [s["path"] for s in audit["suspects"]]
    assert sorted(found) == sorted(paths[i] for i in flipped)
    assert all(s["suggested"] != s["label"] and s["confidence"] >= 0.7 for s in audit["suspects"])
    issue = mislabel_issue(audit, "job1")
    assert issue["code"] == "suspected_mislabel" and issue["level"] == "warning" and issue["files"] == found
    assert mislabel_issue({"suspects": []}) is None
    assert audit_labels(features[:3], [0, 0, 1], paths[:3], ["a", "b"]) is None  # a class of one image


def test_stored_rows_keep_ood_score_and_reason() -> None:
    row = {"path": "x.png", "label": "unknown", "confidence": 0.9, "top_k": [{"label": "a", "confidence": 0.9}],
           "error": None, "ood_score": 0.5, "reason": "unlike the training images"}
    stored = PredictionResult(**stored_result(row))
    assert result_row(stored) == row
    old = PredictionResult(path="y.png", label="a", confidence=0.8, top_k=[{"label": "a", "confidence": 0.8}])
    assert result_row(old)["top_k"] == [{"label": "a", "confidence": 0.8}] and result_row(old)["ood_score"] is None


def test_fine_tuned_features_from_the_cache_equal_a_full_pass(shapes: Path) -> None:
    info = BACKBONES["efficientnet_lite0"]
    prep = Preprocessing.for_size(64, info.mean, info.std)
    data = load_dataset(shapes, 0.3, 0, prep.resize)
    model = build_model("efficientnet_lite0", 2, True).eval()
    split_at = len(model.stages) - info.finetune_stages
    cache = build_cache(model, data.train, data.val, prep, 0, split_at, True, 8, 0, lambda n: None)
    with torch.no_grad():
        for p in model.stages[-1].parameters():
            p.add_(0.01)  # as if fine-tuned: the cached pooled features are stale, the cached maps are not
    train_f, val_f = final_features(model, data.train, data.val, cache, False, prep, 8)
    assert torch.allclose(train_f, _pooled(model, data.train, prep, 8), atol=1e-4)
    assert torch.allclose(val_f, _pooled(model, data.val, prep, 8), atol=1e-4)



def test_a_fine_tuned_trunk_takes_its_threshold_from_images_it_never_saw(shapes: Path) -> None:
    # Its training images' own features were fitted on: their leave-one-out scores would set the bar too low.
    info = BACKBONES["efficientnet_lite0"]
    prep = Preprocessing.for_size(64, info.mean, info.std)
    data = load_dataset(shapes, 0.3, 0, prep.resize)
    model = build_model("efficientnet_lite0", 2, True).eval()
    cache = build_cache(model, data.train, data.val, prep, 0, len(model.stages) - info.finetune_stages, True, 8, 0,
                        lambda n: None)
    with torch.no_grad():
        for p in model.stages[-1].parameters():
            p.add_(0.01)
    meta, _, _ = fit_trust(model, data.train, data.val, ["circles", "squares"], cache, False, prep, 8, 0)
    train_f, val_f = final_features(model, data.train, data.val, cache, False, prep, 8)
    bank = fit_knn(train_f.numpy())
    expected, rule = threshold_for(bank.score(val_f.numpy()))
    assert meta["ood"]["rule"] == f"fine-tuned trunk, validation images against the training images: {rule}"
    assert meta["ood"]["threshold"] == pytest.approx(expected, abs=1e-6)
    linear, _, _ = fit_trust(model, data.train, data.val, ["circles", "squares"], cache, True, prep, 8, 0)
    assert linear["ood"]["rule"].startswith("exponential tail")  # 20 leave-one-out scores, below the conformal rank

def test_trained_model_carries_calibration_ood_and_audit(shapes: Path, tmp_path: Path) -> None:
    spec = TrainSpec(backbone="efficientnet_lite0", image_size=64, batch_size=8, views=1, patience=0, mode="linear",
                     epochs=3, val_split=0.3)
    result = fit(shapes, spec, tmp_path / "job", tmp_path / "model")
    metrics = result.metrics
    assert metrics["calibration"]["temperature"] > 0 and "ece_after" in metrics["calibration"]
    assert metrics["ood"]["bank_size"] == 20 and metrics["ood"]["threshold"] > 0
    assert "suspects" in metrics["label_audit"]
    noise = tmp_path / "in" / "noise.png"
    noise.parent.mkdir()
    cv2.imwrite(str(noise), np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    files = [("noise.png", noise), ("circle.png", next((shapes / "circles").iterdir()))]
    predictor = Predictor.from_artifact(result.model_path, runtime="torch", optimize=False)
    rows = predictor.predict_files(files)
    assert all(isinstance(r["ood_score"], float) for r in rows)
    assert rows[0]["label"] == "unknown" and rows[0]["reason"].startswith("unlike the training images")
    assert rows[1]["label"] == "circles" and rows[1]["reason"] is None
    kept = predictor.predict_files(files, reject_ood=False)
    assert kept[0]["label"] in ("circles", "squares") and kept[0]["ood_score"] == rows[0]["ood_score"]


def test_audit_lands_in_the_dataset_report(tmp_path: Path) -> None:
    from graft.shared.config import Config
    from graft.shared.db import session_scope
    from graft.shared.models import DatasetRecord
    from graft.shared.schema import upgrade
    from graft.worker.label_audit import record_label_audit

    url = f"sqlite:///{tmp_path / 'graft.db'}"
    upgrade(url)
    old = {"level": "warning", "code": "suspected_mislabel", "files": ["a/old.jpg"], "count": 1}
    kept = {"level": "warning", "code": "class_small", "files": [], "count": 0}
    with session_scope(url) as session:
        session.add(DatasetRecord(id="d1", name="d", source="upload", path="/x", report={"issues": [kept, old]}))
    audit = {"count": 2, "suspects": [{"path": "b/2.jpg", "label": "b", "suggested": "a", "confidence": 0.99},
                                      {"path": "a/1.jpg", "label": "a", "suggested": "b", "confidence": 0.8}]}
    record_label_audit(Config(database_url=url), "d1", mislabel_issue(audit, "job9"), "job9")
    with session_scope(url) as session:
        issues = session.get(DatasetRecord, "d1").report["issues"]
    assert issues[0] == kept and len(issues) == 2
    assert issues[1]["files"] == ["b/2.jpg", "a/1.jpg"] and issues[1]["job_id"] == "job9"
    record_label_audit(Config(database_url=url), "d1", None, "job10")  # a later audit with no suspects
    with session_scope(url) as session:
        assert session.get(DatasetRecord, "d1").report["issues"] == [kept]


@pytest.mark.parametrize("n", [300, 1000])
def test_conformal_threshold_flags_at_most_alpha_of_new_scores(n: int) -> None:
    # Exchangeable scores: a new score exceeds the conformal rank with probability <= alpha, averaged over draws.
    rng = np.random.default_rng(n)
    rates = []
    for _ in range(400):
        threshold, rule = threshold_for(rng.gamma(4.0, 1.0, n), alpha=0.01)
        rates.append((rng.gamma(4.0, 1.0, 2000) > threshold).mean())
    assert rule.startswith("conformal") and 0.004 < np.mean(rates) <= 0.0105, np.mean(rates)


@pytest.mark.parametrize("n", [30, 60, 120])  # at 10 scores 2.6 %, at 20 about 1 %: too few to read a tail off
def test_few_scores_extrapolate_the_tail_above_every_score(n: int) -> None:
    # Below 1/alpha - 1 scores no rank promises alpha: the threshold extrapolates the tail and stays above the max.
    rng = np.random.default_rng(n)
    rates = []
    for _ in range(400):
        scores = rng.gamma(4.0, 1.0, n)
        threshold, rule = threshold_for(scores, alpha=0.0075, tail_alpha=0.0025)
        assert rule.startswith("exponential tail") and threshold >= scores.max()
        rates.append((rng.gamma(4.0, 1.0, 2000) > threshold).mean())
    assert np.mean(rates) <= 0.0075, np.mean(rates)
