"""Dataset scanning, splitting and decoding on small generated images, including awkward files."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from graft.cli.sampledata import make_shapes_dataset
from graft.worker.core.dataset import DatasetError, find_files, load_dataset, stratified_split
from graft.worker.core.images import ImageError, decode_image

SIZE = 40  # generated images are SIZE x SIZE
LEFT, RIGHT = (200, 30, 30), (20, 40, 220)  # RGB halves of the test picture


def _picture(h: int = 30, w: int = 45) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2], img[:, w // 2 :] = LEFT, RIGHT
    return img


ODD = ["alpha.png", "gray.png", "deep16.png", "cmyk.jpg", "anim.gif", "pillow_only.tga", "chat_été_猫.png"]


def _write_odd_images(folder: Path) -> list[str]:
    """Write unusual but readable images into folder; return their names."""
    pic = _picture()
    Image.fromarray(np.dstack([pic, np.full(pic.shape[:2], 100, np.uint8)]), "RGBA").save(folder / "alpha.png")
    Image.fromarray(pic[:, :, 0]).save(folder / "gray.png")
    cv2.imwrite(str(folder / "deep16.png"), pic[:, :, ::-1].astype(np.uint16) * 257)
    Image.fromarray(pic).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    frames = [Image.fromarray(pic), Image.fromarray(255 - pic)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100)  # first frame wins
    Image.fromarray(pic).save(folder / "pillow_only.tga")
    Image.fromarray(pic).save(folder / "chat_été_猫.png")
    return ODD


def _write_unreadable(folder: Path) -> list[str]:
    good = folder.parent.parent / "good.jpg"
    cv2.imwrite(str(good), _picture())
    data = good.read_bytes()
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "half.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.jpg").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    good.unlink()
    return ["corrupt.jpg", "empty.jpg", "half.jpg", "notes.jpg"]


def _write_junk(root: Path, class_dir: Path) -> None:
    for folder in (root, class_dir):
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
        (folder / "desktop.ini").write_text("[.ShellClassInfo]")
        (folder / ".hidden.jpg").write_bytes(b"junk")
    for folder in (root / "__MACOSX" / class_dir.name, class_dir / "__MACOSX", class_dir / ".thumbs"):
        folder.mkdir(parents=True)
        (folder / "._img.jpg").write_bytes(b"\0\5\26\7")
        (folder / "img.jpg").write_bytes(b"resource fork")


@pytest.fixture()
def messy(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """Three shape classes; squares also holds odd readable files, circles unreadable ones; junk everywhere."""
    root = make_shapes_dataset(tmp_path / "messy", per_class=6, size=SIZE)
    odd = _write_odd_images(root / "squares")
    bad = _write_unreadable(root / "circles")
    _write_junk(root, root / "triangles")
    return root, odd, bad


def test_find_files_ignores_junk_silently(messy: tuple[Path, list[str], list[str]]) -> None:
    root, odd, bad = messy
    classes, files, val = find_files(root)
    assert classes == ["circles", "squares", "triangles"] and val is None
    names = {c: [p.name for p in paths] for c, paths in files.items()}
    assert names["triangles"] == [f"triangles_{i:03d}.jpg" for i in range(6)]
    assert sorted(names["circles"]) == sorted([f"circles_{i:03d}.jpg" for i in range(6)] + bad)
    assert sorted(names["squares"]) == sorted([f"squares_{i:03d}.jpg" for i in range(6)] + odd)
    assert all(paths == sorted(paths) for paths in files.values())


def test_load_dataset_decodes_odd_files_and_skips_unreadable(messy: tuple[Path, list[str], list[str]]) -> None:
    root, odd, bad = messy
    seen: list[tuple[int, int]] = []
    data = load_dataset(root, val_split=0.25, seed=0, short_side=32, on_file=lambda d, t: seen.append((d, t)))
    assert data.classes == ["circles", "squares", "triangles"]
    assert sorted(s["path"] for s in data.skipped) == sorted(f"circles/{name}" for name in bad)
    assert all(s["reason"] for s in data.skipped)
    empty = next(s for s in data.skipped if s["path"].endswith("empty.jpg"))
    assert empty["reason"] == "empty file"
    loaded = set(data.train.paths) | set(data.val.paths)
    assert {f"squares/{name}" for name in odd} <= loaded
    assert not any("DS_Store" in p or "MACOSX" in p or "Thumbs" in p or "/." in p for p in loaded)
    total = 6 * 3 + len(odd) + len(bad)
    assert seen == [(i, total) for i in range(1, total + 1)]
    assert len(data.train) + len(data.val) == total - len(bad)
    for split in (data.train, data.val):
        assert len(split.images) == len(split.labels) == len(split.paths)
        for img, label, path in zip(split.images, split.labels, split.paths):
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) == 32
            assert data.classes[label] == path.split("/")[0]


@pytest.mark.parametrize("name", ODD)
def test_decode_odd_formats(tmp_path: Path, name: str) -> None:
    _write_odd_images(tmp_path)
    img = decode_image(tmp_path / name, 20)
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    left, right = img[10, 3].astype(int), img[10, 26].astype(int)
    if name == "gray.png":
        assert abs(left - LEFT[0]).max() <= 3 and abs(right - RIGHT[0]).max() <= 3
    else:
        assert abs(left - LEFT).max() <= 6 and abs(right - RIGHT).max() <= 6


def test_pillow_fallback_is_needed_for_tga(tmp_path: Path) -> None:
    """OpenCV 5 decodes GIF itself; TGA still takes the Pillow path."""
    _write_odd_images(tmp_path)
    assert cv2.imdecode(np.fromfile(tmp_path / "pillow_only.tga", np.uint8), cv2.IMREAD_COLOR) is None
    assert decode_image(tmp_path / "pillow_only.tga", 30).shape == (30, 45, 3)


@pytest.mark.parametrize("name", ["corrupt.jpg", "half.jpg", "notes.jpg", "empty.jpg"])
def test_decode_unreadable_raises_image_error(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    _write_unreadable(folder)
    with pytest.raises(ImageError):
        decode_image(folder / name, 32)


def test_decode_missing_file_raises_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read file"):
        decode_image(tmp_path / "nope.jpg", 32)


@pytest.mark.parametrize(("h", "w", "short"), [(30, 45, 30), (30, 45, 16), (30, 45, 64), (45, 30, 16), (40, 40, 7)])
def test_decoded_short_side_is_requested(tmp_path: Path, h: int, w: int, short: int) -> None:
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), _picture(h, w))
    img = decode_image(path, short)
    assert min(img.shape[:2]) == short
    assert abs(img.shape[0] / img.shape[1] - h / w) < 0.1


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smooth 2000x1500 JPEG (libjpeg can decode it at a reduced scale)."""
    x = np.linspace(0, 255, 2000, dtype=np.float32)
    y = np.linspace(0, 255, 1500, dtype=np.float32)[:, None]
    img = np.dstack([np.broadcast_to(x, (1500, 2000)), np.broadcast_to(y, (1500, 2000)), (x + y) / 2]).astype(np.uint8)
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    cv2.imwrite(str(path), img)
    return path


def test_reduced_decode_of_a_large_jpeg(big_jpeg: Path) -> None:
    img = decode_image(big_jpeg, 256)
    assert img.shape == (256, 341, 3)  # decoded at 1/4 (375 px short side), then resized to 256
    assert decode_image(big_jpeg, 200).shape == (200, 267, 3)  # 1/4 again; 1/8 would be 187 < 200


def test_images_over_max_pixels_are_refused(big_jpeg: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="too large"):
        decode_image(big_jpeg, 64, max_pixels=2000 * 1500 - 1)
    assert decode_image(big_jpeg, 64, max_pixels=2000 * 1500).shape[0] == 64
    assert decode_image(big_jpeg, 64, max_pixels=None).shape[0] == 64
    root = make_shapes_dataset(tmp_path / "ds", per_class=3, size=SIZE, classes=("circles", "squares"))
    (root / "squares" / "big.jpg").symlink_to(big_jpeg)
    data = load_dataset(root, val_split=0.34, seed=0, short_side=32, max_pixels=1_000_000)
    assert [(s["path"], "too large" in s["reason"]) for s in data.skipped] == [("squares/big.jpg", True)]


def test_train_val_layout(tmp_path: Path) -> None:
    make_shapes_dataset(tmp_path / "d" / "train", per_class=4, size=SIZE, classes=("circles", "squares"))
    make_shapes_dataset(tmp_path / "d" / "val", per_class=2, size=SIZE, seed=1, classes=("circles", "squares"))
    (tmp_path / "d" / "val" / ".DS_Store").write_bytes(b"junk")
    classes, train, val = find_files(tmp_path / "d")
    assert classes == ["circles", "squares"] and val is not None
    assert {c: len(p) for c, p in train.items()} == {"circles": 4, "squares": 4}
    assert {c: len(p) for c, p in val.items()} == {"circles": 2, "squares": 2}
    data = load_dataset(tmp_path / "d", val_split=0.5, seed=3, short_side=32)  # val_split unused with val/
    assert len(data.train) == 8 and len(data.val) == 4
    assert all(p.startswith("train/") for p in data.train.paths)
    assert all(p.startswith("val/") for p in data.val.paths)


def _fake_files(counts: dict[str, int]) -> dict[str, list[Path]]:
    return {c: [Path(f"/d/{c}/{i:03d}.jpg") for i in range(n)] for c, n in counts.items()}


@pytest.mark.parametrize(
    ("n", "val_split", "n_val"),
    [(10, 0.2, 2), (10, 0.25, 2), (10, 0.5, 5), (3, 0.2, 1), (2, 0.2, 1), (2, 0.9, 1), (1, 0.2, 0), (10, 0.0, 0),
     (7, 0.99, 6)],
)
def test_stratified_split_proportions(n: int, val_split: float, n_val: int) -> None:
    files = _fake_files({"a": n, "b": n * 2})
    train, val = stratified_split(files, val_split, seed=0)
    assert len(val["a"]) == n_val
    for name, paths in files.items():
        assert sorted(train[name] + val[name]) == paths and not set(train[name]) & set(val[name])
        assert train[name] == sorted(train[name]) and val[name] == sorted(val[name])


def test_stratified_split_is_reproducible_with_seed() -> None:
    files = _fake_files({"a": 20, "b": 15})
    assert stratified_split(files, 0.2, seed=7) == stratified_split(files, 0.2, seed=7)
    draws = {tuple(stratified_split(files, 0.2, seed=s)[1]["a"]) for s in range(5)}
    assert len(draws) > 1


def test_fewer_than_two_classes(tmp_path: Path) -> None:
    root = make_shapes_dataset(tmp_path / "one", per_class=4, size=SIZE, classes=("circles",))
    with pytest.raises(DatasetError, match="need at least 2 classes"):
        load_dataset(root, 0.2, 0, 32)
    (tmp_path / "none").mkdir()
    with pytest.raises(DatasetError, match="found 0"):
        load_dataset(tmp_path / "none", 0.2, 0, 32)
    with pytest.raises(DatasetError, match="no such directory"):
        load_dataset(tmp_path / "missing", 0.2, 0, 32)


def test_class_with_only_unreadable_files(tmp_path: Path) -> None:
    root = make_shapes_dataset(tmp_path / "ds", per_class=4, size=SIZE, classes=("circles", "squares"))
    (root / "broken").mkdir()
    _write_unreadable(root / "broken")
    with pytest.raises(DatasetError, match="no readable training image: broken"):
        load_dataset(root, 0.25, 0, 32)


def test_no_validation_images(tmp_path: Path) -> None:
    root = make_shapes_dataset(tmp_path / "ds", per_class=3, size=SIZE, classes=("circles", "squares"))
    with pytest.raises(DatasetError, match="no validation images"):
        load_dataset(root, 0.0, 0, 32)
