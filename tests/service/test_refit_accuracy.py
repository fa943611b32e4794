"""Real data: with 20 images a class, Graft's default job (refit on all of them) is at least as good as a linear probe."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import HYMENOPTERA

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
BACKBONE, PER_CLASS = "efficientnet_lite0", 20


def _draw(folder: Path, target: Path) -> list[str]:
    """A seeded draw of PER_CLASS training images a class, linked into target/<class>/."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    rng = random.Random(0)  # the draw of bench/backbone_accuracy.py, so this is its efficientnet_lite0 row of 20
    for name in classes:
        files = sorted((folder / name).iterdir())
        rng.shuffle(files)
        (target / name).mkdir(parents=True)
        for path in files[:PER_CLASS]:
            (target / name / path.name).symlink_to(path)
    return classes


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason=f"hymenoptera dataset not found at {HYMENOPTERA}")
def test_refit_job_is_at_least_as_good_as_the_probe(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from torch import nn

    from graft.worker.core.backbones import BACKBONES, build_model
    from graft.worker.core.images import decode_image
    from graft.worker.core.predict import Predictor, crop_batch, list_input_files
    from graft.worker.core.runtimes import Normalized, make_runner
    from graft.worker.core.train import TrainSpec, fit
    from graft.worker.core.transforms import Preprocessing

    classes = _draw(HYMENOPTERA / "train", tmp_path / "data")
    val = list_input_files(HYMENOPTERA / "val").files
    val_y = np.array([classes.index(name.split("/")[0]) for name, _ in val])
    result = fit(tmp_path / "data", TrainSpec(backbone=BACKBONE), tmp_path / "job", tmp_path / "model")
    assert result.metrics["refit"] is True and result.metrics["train_images"] + result.metrics["val_images"] == 40
    rows = Predictor.from_artifact(result.model_path).predict_files(val)
    graft = float(np.mean([classes.index(r["label"]) == y for r, y in zip(rows, val_y)]))

    info = BACKBONES[BACKBONE]
    prep = Preprocessing.for_size(info.image_size, info.mean, info.std)
    trunk = build_model(BACKBONE, 2, pretrained=True).eval()
    trunk.head = nn.Identity()
    runner = make_runner("openvino", Normalized(trunk, prep.mean, prep.std), prep.crop, threads=torch.get_num_threads())
    train = sorted((tmp_path / "data").glob("*/*"))
    crops = crop_batch([decode_image(p, prep.resize) for p in train], prep)
    y = np.array([classes.index(p.parent.name) for p in train])
    features = np.concatenate([runner(crops), runner(np.ascontiguousarray(crops[:, :, ::-1]))])
    probe = LogisticRegression(max_iter=5000).fit(features, np.concatenate([y, y]))
    val_x = np.concatenate([runner(crop_batch([decode_image(p, prep.resize)], prep)) for _, p in val])
    probe_acc = float((probe.predict(val_x) == val_y).mean())
    assert graft >= probe_acc, (graft, probe_acc, result.metrics["selected"], result.metrics["head_C"])
