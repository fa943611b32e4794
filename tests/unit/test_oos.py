"""Out-of-sample predictions and thumbnails written by workers: tied to the reported metrics, bounded, confined."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from graft.shared.thumbs import THUMB_SIDE, THUMBS_DIR, keep_bounded, thumb_file
from graft.worker.core.thumbnails import write_class_thumbnails
from graft.worker.core.train import TrainSpec, fit
from tests.helpers import TINY_TRAIN

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("params", [
    {"mode": "linear", "epochs": 2},  # evaluated from the cached pooled features
    {"mode": "finetune", "epochs": 2, "freeze_epochs": 1},  # from the cached activations of the last stages
    {"mode": "full", "epochs": 1, "freeze_epochs": 0},  # on the fly
])
def test_predictions_are_the_ones_behind_the_reported_metrics(shapes: Path, tmp_path: Path, params: dict,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    result = fit(shapes, TrainSpec(**{**TINY_TRAIN, **params}), tmp_path / "job", tmp_path / "model")
    preds, classes = result.predictions, result.classes
    assert len(preds) == result.val_images == result.metrics["val_images"]
    matrix = [[sum(1 for p in preds if p["true"] == t and p["predicted"] == q) for q in classes] for t in classes]
    assert matrix == result.metrics["confusion_matrix"]
    assert all(1 / len(classes) <= p["confidence"] <= 1 for p in preds)  # the predicted class is the top one
    assert "differ on re-evaluation" not in caplog.text
    assert {p["file"].split("/")[0] for p in preds} == set(classes)  # relative to the dataset, class folder first
    for p in preds:
        with Image.open(tmp_path / "model" / THUMBS_DIR / f"{p['index']}.jpg") as img:
            assert img.format == "JPEG" and max(img.size) <= THUMB_SIDE


def test_the_bound_keeps_every_error_first() -> None:
    records = [{"true": "a", "predicted": "a" if i % 3 else "b", "i": i} for i in range(30)]
    kept = keep_bounded(records, limit=12)
    assert len(kept) == 12 and [r["i"] for r in kept] == sorted(r["i"] for r in kept)  # order kept
    assert {r["i"] for r in kept if r["predicted"] == "b"} == set(range(0, 30, 3))  # all 10 errors
    assert keep_bounded(records, limit=5) == [r for r in records if r["predicted"] == "b"][:5]


@pytest.mark.parametrize("name", ["..", "../x.jpg", "1.png", "1.jpg/", "a.jpg", "", "01234567.jpg", "1.jpg\x00"])
def test_a_thumbnail_name_is_checked(tmp_path: Path, name: str) -> None:
    (tmp_path / "1.jpg").write_bytes(b"x")
    assert thumb_file(tmp_path, name) is None


def test_a_thumbnail_that_links_outside_its_folder_is_not_served(tmp_path: Path) -> None:
    folder, secret = tmp_path / "thumbs", tmp_path / "secret.jpg"
    folder.mkdir()
    secret.write_bytes(b"secret")
    (folder / "7.jpg").symlink_to(secret)
    (folder / "8.jpg").write_bytes(b"ok")
    assert thumb_file(folder, "7.jpg") is None
    assert thumb_file(folder, "8.jpg") == (folder / "8.jpg").resolve()


def test_class_thumbnails_are_few_small_and_skip_unreadable_files(shapes: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for cls in ("circles", "squares"):
        (data / cls).mkdir()
        for src in sorted((shapes / cls).iterdir())[:6]:
            (data / cls / src.name).write_bytes(src.read_bytes())
    (data / "circles" / "000-broken.png").write_bytes(b"\x89PNG not really")
    made = write_class_thumbnails(data, tmp_path / "thumbs", max_pixels=None, per_class=4)
    assert {k: len(v) for k, v in made.items()} == {"circles": 4, "squares": 4}
    names = [n for v in made.values() for n in v]
    assert len(set(names)) == 8 and all(thumb_file(tmp_path / "thumbs", n) for n in names)
