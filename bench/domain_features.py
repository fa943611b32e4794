"""Frozen ImageNet features of every image of the four real sets, plain and mirrored, cached per set and backbone.

The accuracy, `unknown` and audit benches share them: pooled features of the frozen trunk depend on neither labels
nor draws, so each (set, backbone) is computed once, through OpenVINO as predict jobs run, and kept as .npz under
~/.cache/graft-bench/domains. Also the seeded draws every bench uses (`draw`).

Run: python bench/domain_features.py [--sets flowers,trash,rps,hymenoptera] [--backbones efficientnet_lite0,...]
"""
from __future__ import annotations

import argparse
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from graft.worker.core.backbones import BACKBONES, build_model
from graft.worker.core.dataset import find_files
from graft.worker.core.images import decode_image
from graft.worker.core.predict import crop_batch
from graft.worker.core.runtimes import Normalized, make_runner
from graft.worker.core.transforms import Preprocessing

log = logging.getLogger("domain_features")
ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
SETS = ("hymenoptera", "flowers", "trash", "rps")
LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
CACHE = Path.home() / ".cache" / "graft-bench" / "domains"
TEST_SHARE = 0.3  # of each class, for sets without a val/ split


@dataclass
class SetImages:
    """Every image of one set in a fixed order, its class index, and which are the fixed test split (hymenoptera val/)."""

    name: str
    classes: list[str]
    paths: list[Path]
    labels: np.ndarray
    fixed_test: np.ndarray | None  # bool per image, or None: test drawn per seed


def images(name: str) -> SetImages:
    """The set's images, classes sorted, files sorted within a class."""
    classes, train, val = find_files(DATASETS / name)
    paths, labels, test = [], [], []
    for split, is_test in ((train, False), (val or {}, True)):
        for i, c in enumerate(classes):
            for p in sorted(split.get(c, [])):
                paths.append(p)
                labels.append(i)
                test.append(is_test)
    return SetImages(name, list(classes), paths, np.array(labels), np.array(test) if val else None)


def draw(data: SetImages, per_class: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): per_class images a class (None: all of the train pool) and the held-out rest."""
    rng = random.Random(seed)
    train_idx, test_idx = [], []
    for c in range(len(data.classes)):
        rows = [int(i) for i in np.flatnonzero(data.labels == c)]
        if data.fixed_test is not None:
            pool = [i for i in rows if not data.fixed_test[i]]
            test = [i for i in rows if data.fixed_test[i]]
        else:
            rng.shuffle(rows)
            cut = int(round(len(rows) * TEST_SHARE))
            test, pool = rows[:cut], rows[cut:]
        pool = sorted(pool)
        rng.shuffle(pool)
        train_idx += pool if per_class is None else pool[:per_class]
        test_idx += test
    return np.array(train_idx), np.array(sorted(test_idx))


def features(data: SetImages, backbone: str) -> tuple[np.ndarray, np.ndarray]:
    """(plain, mirrored) pooled features, (N, D) each, cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{data.name}-{backbone}.npz"
    names = np.array([str(p) for p in data.paths])
    if path.is_file():
        cached = np.load(path)
        if list(cached["names"]) == list(names):
            return cached["plain"], cached["mirror"]
    info = BACKBONES[backbone]
    prep = Preprocessing.for_size(info.image_size, info.mean, info.std)
    model = build_model(backbone, 2, pretrained=True).eval()
    model.head = nn.Identity()
    runner = make_runner("openvino", Normalized(model, prep.mean, prep.std), prep.crop)
    plain, mirror = [], []
    for start in range(0, len(data.paths), 32):
        crops = crop_batch([decode_image(p, prep.resize) for p in data.paths[start : start + 32]], prep)
        plain.append(runner(crops))
        mirror.append(runner(np.ascontiguousarray(crops[:, :, ::-1])))
    out = np.concatenate(plain), np.concatenate(mirror)
    np.savez(path, names=names, plain=out[0], mirror=out[1])
    log.warning("%s %s: %d images cached", data.name, backbone, len(names))
    return out


def main() -> None:
    """Fill the cache."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--backbones", default=",".join(LITES))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for backbone in args.backbones.split(","):
        for name in args.sets.split(","):
            features(images(name), backbone)


if __name__ == "__main__":
    main()
