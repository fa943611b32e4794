"""The caching pass: OpenVINO trunk against PyTorch, the on-disk cache's reuse, content keys and LRU eviction."""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graft.cli.sampledata import make_shapes_dataset
from graft.worker.core import trunk as trunk_module
from graft.worker.core.backbones import BACKBONES, build_model
from graft.worker.core.cache_store import CacheStore
from graft.worker.core.train import Caching, TrainSpec, fit
from graft.worker.core.transforms import Preprocessing
from graft.worker.core.trunk import TOLERANCE, TorchTrunk, TrunkGraph, make_trunk

TINY = {"backbone": "efficientnet_lite0", "image_size": 64, "batch_size": 8, "views": 1, "patience": 0,
        "mode": "finetune", "epochs": 2, "freeze_epochs": 1}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 8 small generated images."""
    return make_shapes_dataset(tmp_path_factory.mktemp("trunk") / "shapes", per_class=8, size=48,
                               classes=("circles", "squares"))


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_openvino_trunk_matches_torch(backbone: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Activations at the fine-tune cut and pooled features agree within TOLERANCE, converted or read from disk."""
    monkeypatch.setattr(trunk_module, "_COMPILED", {})
    info = BACKBONES[backbone]
    prep = Preprocessing.for_size(64, info.mean, info.std)
    model = build_model(backbone, 3, pretrained=backbone != "resnet18").eval()  # ResNet-18: random weights here
    split_at = len(model.stages) - info.finetune_stages
    crops = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    want_maps, want_pooled = TorchTrunk(TrunkGraph(model, split_at, prep))(crops)
    for _ in range(2):  # the first converts and writes the IR; the second (a new process, as it were) reads it
        trunk_module._COMPILED.clear()
        runner = make_trunk(model, split_at, prep, ir_dir=tmp_path)
        assert runner.name == "openvino"
        maps, pooled = runner(crops)
        assert maps.shape == want_maps.shape and maps.shape[-1] in (320, 256)  # NHWC at the cut (Lite0, ResNet-18)
        np.testing.assert_allclose(maps, want_maps, **TOLERANCE)
        np.testing.assert_allclose(pooled, want_pooled, **TOLERANCE)
    assert len(list(tmp_path.glob("*/trunk.xml"))) == 1


def test_without_openvino_the_pass_runs_on_torch(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """OpenVINO missing: the trunk is PyTorch's, and the log says why."""
    monkeypatch.setattr(trunk_module, "_COMPILED", {})
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    info = BACKBONES["resnet18"]
    model = build_model("resnet18", 2, pretrained=False).eval()
    with caplog.at_level(logging.WARNING, "graft.worker.core.trunk"):
        runner = make_trunk(model, 4, Preprocessing.for_size(32, info.mean, info.std))
    assert runner.name == "torch"
    assert "openvino unavailable" in caplog.text


def _fit(data: Path, tmp: Path, cache: Path, name: str, **params: object) -> dict:
    spec = TrainSpec(**{**TINY, **params})
    return fit(data, spec, tmp / name / "job", tmp / name / "model", caching=Caching.on_disk(cache, 64)).metrics


def test_a_second_job_reuses_the_cached_views(shapes: Path, tmp_path: Path) -> None:
    """The same data again: no trunk pass at all, and the very same training (the stored views are exact)."""
    cache = tmp_path / "cache"
    first = _fit(shapes, tmp_path, cache, "a")
    total = (first["train_images"] + first["val_images"]) * 2  # views=1: plain + mirror of each train and val image
    assert first["caching"]["views_computed"] == total and first["caching"]["views_reused"] == 0
    second = _fit(shapes, tmp_path, cache, "b")
    assert second["caching"]["views_computed"] == 0 and second["caching"]["views_reused"] == total
    assert [h["val_acc"] for h in second["history"]] == [h["val_acc"] for h in first["history"]]
    assert [h["train_loss"] for h in second["history"]] == [h["train_loss"] for h in first["history"]]
    # Another seed, and a random crop (view 2): plain and mirror views are the seed's-free ones already stored.
    other_seed = _fit(shapes, tmp_path, cache, "c", seed=7, mode="linear", epochs=1, views=2)
    assert other_seed["caching"]["views_computed"] == other_seed["train_images"]  # view 2 of each train image
    assert other_seed["caching"]["views_reused"] == total


def test_cache_keys_are_file_contents(shapes: Path, tmp_path: Path) -> None:
    """A renamed file is still found; a file whose bytes changed is computed again (its views only)."""
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    shutil.copytree(shapes, data / "train", dirs_exist_ok=True)
    shutil.copytree(shapes, data / "val", dirs_exist_ok=True)
    cache = tmp_path / "cache"
    quick = {"mode": "linear", "epochs": 1}
    first = _fit(data, tmp_path, cache, "a", **quick)
    # An empty cache: only val's mirror images (pooled after the main pass) are found, stored moments before for
    # the train copies of the same bytes.
    assert first["caching"]["views_reused"] == first["val_images"]
    train_file = data / "train" / "circles" / "circles_000.jpg"
    train_file.rename(train_file.with_name("renamed.jpg"))
    renamed = _fit(data, tmp_path, cache, "b", **quick)
    assert renamed["caching"]["views_computed"] == 0
    val_file = data / "val" / "squares" / "squares_001.jpg"
    val_file.write_bytes(val_file.read_bytes() + b"\0")  # same pixels, other bytes: another file to the cache
    changed = _fit(data, tmp_path, cache, "c", **quick)
    assert changed["caching"]["views_computed"] == 2  # a val image: its plain view and its mirror image only


def test_the_store_evicts_the_least_recently_used(tmp_path: Path) -> None:
    """Past its size limit the store drops the entries used longest ago, and stays within the limit."""
    store = CacheStore(tmp_path, size_mb=1)
    block = np.zeros(40 * 1024, np.uint8)  # 30 of these: 1.2 MB, over the limit
    for i in range(30):
        store.put(f"k{i}", block + i)
        assert store.get("k0") is not None  # k0 is used all along: always the most recent but one
    store.evict()
    assert store.volume() <= 2**20
    assert "k0" in store and "k29" in store
    assert "k1" not in store and "k2" not in store  # the oldest untouched went first
    kept = [i for i in range(30) if f"k{i}" in store]
    assert kept == [0, *range(kept[1], 30)]  # evicted in order of last use, none skipped
    assert int(store.get("k29")[0]) == 29


def test_the_store_refuses_pickles(tmp_path: Path) -> None:
    """A value that is not .npy bytes is never unpickled: a damaged or planted entry reads as a miss."""
    store = CacheStore(tmp_path, size_mb=1)
    store._cache.set("planted", {"not": "bytes"})  # stored pickled by diskcache itself
    assert store.get("planted") is None
    assert "planted" not in store


def test_the_worker_main_process_loads_no_ml_stack() -> None:
    """The worker's main process (Celery app, tasks, runner) imports neither torch nor OpenVINO nor the cache: they
    belong to pool children, which also convert and compile the trunk (a torch op in the parent hangs children)."""
    code = ("import sys, graft.worker.celery_app, graft.worker.tasks, graft.worker.train_runner\n"
            "print(sorted(m for m in ('torch', 'openvino', 'diskcache', 'cv2') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("seconds_per_call", "chosen"), [
    (lambda n: 0.02, 8),  # a fixed cost per call: the largest batch wins
    (lambda n: 0.004 * n * n, 2),  # a cost growing faster than the batch: the smallest wins
])
def test_prediction_batch_size_is_measured(seconds_per_call, chosen: int) -> None:  # noqa: ANN001
    """The batch size with the most images per second is the one chosen."""
    import time

    from graft.worker.core.batching import choose_batch_size

    def run(batch: np.ndarray) -> None:
        time.sleep(seconds_per_call(len(batch)))

    assert choose_batch_size(run, 8, candidates=(2, 4, 8))[0] == chosen


def test_view_one_is_keyed_as_the_mirror_image() -> None:
    """Entries stored when view 1 was a seeded random crop (format feat1, tag aug<seed>.1) are never read as mirrors."""
    from types import SimpleNamespace

    from graft.worker.core.features import _key
    from graft.worker.core.pipeline import FEATURE_FORMAT

    split = SimpleNamespace(digests=["d0"])
    keys = [_key("trunk", split, 0, view, 0) for view in range(3)]  # type: ignore[arg-type]
    assert len(set(keys)) == 3 and keys[1].endswith(":mirror")
    assert FEATURE_FORMAT != "feat1" and keys[1] != "feat1:trunk:d0:aug0.1"
    assert keys[2] == f"{FEATURE_FORMAT}:trunk:d0:aug0.2"
