"""The pure exporter on a tiny random-weight model: zip members, documents, and the README's own snippet."""
from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from graft.worker.core.backbones import build_model
from graft.worker.core.checkpoint import save_model_artifact
from graft.worker.core.export import MODEL_FILES, PREDICT_SNIPPETS, PREPROCESS_SNIPPET, build_export
from graft.worker.core.predict import Predictor
from graft.worker.core.transforms import Preprocessing

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES = ["ant", "bee", "wasp"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight resnet18 artifact at 32 px (nothing downloaded)."""
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES), pretrained=False).eval()
    prep = Preprocessing.for_size(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    meta = {"backbone": "resnet18", "classes": CLASSES, "image_size": 32, "preprocessing": prep.to_dict(),
            "metrics": {"val_acc": 0.5}}
    return save_model_artifact(tmp_path_factory.mktemp("model"), model, meta)


# The cheapest format only: every format is checked against real images in tests/service/test_export.py.
@pytest.mark.parametrize("fmt", ["torchscript"])
def test_export_zip_reproduces_graft(artifact: Path, fmt: str, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    data = build_export(artifact, fmt, model_id="m1")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == sorted(
            [*MODEL_FILES[fmt], "labels.json", "preprocessing.json", "metrics.json", "README.md"])
        archive.extractall(tmp_path)
    assert json.loads((tmp_path / "labels.json").read_text()) == CLASSES
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"val_acc": 0.5}
    prep = json.loads((tmp_path / "preprocessing.json").read_text())
    assert prep["centre_crop"] == 32 and prep["input"]["dtype"] == "uint8" and prep["normalisation"].startswith("baked")
    readme = (tmp_path / "README.md").read_text()
    assert PREPROCESS_SNIPPET in readme and PREDICT_SNIPPETS[fmt] in readme

    crops = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    graft = Predictor.from_artifact(artifact, runtime="torch", optimize=False)
    expected = graft.probabilities(list(crops)).numpy()  # already crop-sized: the centre crop is the whole image
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PyTorch deprecates TorchScript; the format is still asked for
        exec(PREDICT_SNIPPETS[fmt].replace("preprocess(p)", "p"), namespace)  # noqa: S102 - the README's own code
    namespace["np"] = np
    got = namespace["predict"](list(crops))
    assert got.shape == (5, 3) and np.abs(got - expected).max() < 1e-5
