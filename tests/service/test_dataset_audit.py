"""The label audit at inspection: suspects before any training, and views the training job then reuses."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from graft.cli.sampledata import make_shapes_dataset
from graft.worker.core.dataset_audit import audit_dataset
from graft.worker.core.pipeline import Caching
from graft.worker.core.spec import TrainSpec
from graft.worker.core.train import fit

pytestmark = pytest.mark.slow  # real trunk passes over 80 images at 260 px: too slow for the one-minute unit tier


def test_inspection_audit_finds_misfiled_images_and_the_training_job_reuses_its_views(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=40, size=64, classes=("circles", "squares"))
    misfiled = sorted((data / "circles").iterdir())[:2]
    for path in misfiled:  # two circles filed as squares
        shutil.move(path, data / "squares" / f"misfiled-{path.name}")
    caching = Caching.on_disk(tmp_path / "cache", 256)
    result = audit_dataset(data, caching)
    suspects = {s["path"] for s in result.audit["suspects"]}
    assert {f"squares/misfiled-{p.name}" for p in misfiled} <= suspects, result.audit
    assert len(suspects) <= 4 and result.views_computed == 2 * 80 and result.views_reused == 0
    again = audit_dataset(data, caching)  # a second inspection reads every view from the cache
    assert again.views_computed == 0 and again.views_reused == 2 * 80 and again.audit == result.audit
    trained = fit(data, TrainSpec(epochs=2, patience=0), tmp_path / "job", tmp_path / "model",
                  caching=Caching.on_disk(tmp_path / "cache", 256))
    # the job computes only its random crops (views >= 2): every plain and mirrored view comes from the audit
    caching_stats = trained.metrics["caching"]
    assert caching_stats["views_reused"] == 2 * 80, caching_stats
