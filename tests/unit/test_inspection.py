"""The dataset inspection report and the pixel limit, on small generated images (the pure core, no services)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from graft.cli.sampledata import make_shapes_dataset
from tests.archives import huge_png


def _save(path: Path, img: Image.Image, **kwargs) -> Path:  # noqa: ANN003
    """Save img at path, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _picture(seed: int, size: tuple[int, int] = (24, 20)) -> Image.Image:
    """A random-noise RGB picture of size (width, height)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_report_counts_conversions_by_content(tmp_path: Path) -> None:
    """Colour conversions are counted by what the files hold, not by their extensions."""
    from graft.worker.core.inspection import inspect_dataset

    root = tmp_path / "conv"
    _save(root / "a" / "gray.png", _picture(1).convert("L"))
    _save(root / "a" / "alpha.png", _picture(2).convert("RGBA"))
    _save(root / "a" / "palette.gif", _picture(3).convert("P"))
    _save(root / "b" / "cmyk.jpg", _picture(4).convert("CMYK"))
    cv2.imwrite(str(root / "b" / "deep.png"), np.asarray(_picture(5)).astype(np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°
    _save(root / "b" / "rotated.jpg", _picture(6), exif=exif)
    _save(root / "b" / "plain.png", _picture(7))
    (root / "b" / "photo.png").write_bytes((root / "b" / "cmyk.jpg").read_bytes())  # a JPEG named .png: fine
    report = inspect_dataset(root, max_pixels=50_000_000)
    assert report["classes"] == {"a": 3, "b": 5} and report["num_images"] == 8
    assert report["conversions"] == {"grayscale": 1, "alpha": 1, "palette": 1, "cmyk": 2, "16bit": 1,
                                     "exif_orientation": 1}
    codes = {i["code"] for i in report["issues"]}
    assert codes == {"class_small", "duplicate_within_class"}  # photo.png is cmyk.jpg's twin


def test_report_finds_duplicates_and_refuses_big_images_by_header(tmp_path: Path) -> None:
    """Duplicates across classes (an error), across splits and within a class; big images by header; stray files."""
    from graft.worker.core.inspection import inspect_dataset

    root = tmp_path / "dups"
    for s, split in enumerate(("train", "val")):
        for c, cls in enumerate(("ants", "bees")):
            for i in range(3):  # distinct seeds (hash() of a str tuple varies per process and could collide)
                _save(root / split / cls / f"{i}.png", _picture(100 + 10 * (2 * s + c) + i))
    (root / "val" / "ants" / "leak.png").write_bytes((root / "train" / "ants" / "0.png").read_bytes())
    (root / "train" / "bees" / "mislabelled.png").write_bytes((root / "train" / "ants" / "1.png").read_bytes())
    (root / "train" / "bees" / "again.png").write_bytes((root / "train" / "bees" / "2.png").read_bytes())
    _save(root / "train" / "ants" / "big.png", _picture(9, (40, 40)))
    (root / "README.txt").write_text("not a class")
    report = inspect_dataset(root, max_pixels=1000)
    issues = {i["code"]: i for i in report["issues"]}
    assert report["issues"][0]["code"] == "duplicate_across_classes"  # errors first
    assert issues["duplicate_across_classes"]["level"] == "error"
    assert set(issues["duplicate_across_classes"]["files"]) == {"train/ants/1.png", "train/bees/mislabelled.png"}
    assert set(issues["duplicate_train_val"]["files"]) == {"train/ants/0.png", "val/ants/leak.png"}
    assert set(issues["duplicate_within_class"]["files"]) == {"train/bees/2.png", "train/bees/again.png"}
    assert issues["too_large"]["files"] == ["train/ants/big.png"] and "40x40" in issues["too_large"]["details"][
        "train/ants/big.png"]
    assert issues["ignored_files"]["files"] == ["README.txt"]
    assert report["splits"]["val"] == {"ants": 4, "bees": 3} and report["layout"] == "train_val"


@pytest.mark.usefixtures("one_torch_thread")
def test_imbalance_is_reported_and_training_weights_classes(tmp_path: Path) -> None:
    """A 12:1 imbalance is a warning, and training on an imbalanced set weights the rare class up."""
    from graft.worker.core.inspection import inspect_dataset
    from graft.worker.core.train import TrainSpec, class_weights, fit

    root = make_shapes_dataset(tmp_path / "imb", per_class=24, size=40, classes=("circles", "squares"))
    for extra in sorted((root / "squares").iterdir())[2:]:
        extra.unlink()
    issues = {i["code"]: i for i in inspect_dataset(root, 50_000_000)["issues"]}
    assert issues["class_imbalance"]["ratio"] == 12.0 and issues["class_imbalance"]["level"] == "warning"
    assert class_weights([0] * 10 + [1] * 10, 2) is None
    for extra in sorted((root / "circles").iterdir())[12:]:
        extra.unlink()  # 11 circles and 1 square left for training
    spec = TrainSpec(backbone="resnet18", pretrained=False, image_size=32, epochs=1, batch_size=16, val_split=0.1)
    metrics = fit(root, spec, tmp_path / "job", tmp_path / "model").metrics
    weights = metrics["class_weights"]
    assert weights is not None and weights[1] > 10 * weights[0]


def test_pixel_limit_refuses_before_decoding(tmp_path: Path) -> None:
    """The 900-megapixel PNG is refused from its header (in training and predicting alike), in no time."""
    import time

    from graft.worker.core.images import ImageError, decode_image

    path = tmp_path / "huge.png"
    path.write_bytes(huge_png())
    started = time.monotonic()
    with pytest.raises(ImageError, match="too large"):
        decode_image(path, 64)
    small = tmp_path / "small.png"
    _save(small, _picture(1, (30, 30)))
    with pytest.raises(ImageError, match="30x30 pixels exceeds the limit of 800"):
        decode_image(small, 16, max_pixels=800)
    assert time.monotonic() - started < 2
