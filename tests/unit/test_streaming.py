"""Decode overlapped with the trunk pass: the pass starts on the first images, unreadable files found during it are
skipped exactly as when every image is decoded first, and a cancel does not wait for the decodes."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from graft.worker.core import cache_store
from graft.worker.core.backbones import BACKBONES, build_model
from graft.worker.core.cache_store import CacheStore
from graft.worker.core.dataset import DatasetError, TrainingData, load_dataset
from graft.worker.core.features import ViewCache, build_cache
from graft.worker.core.stop import Stopped
from graft.worker.core.train import Caching, TrainSpec, fit
from graft.worker.core.transforms import Preprocessing
from tests.helpers import TINY_TRAIN

pytestmark = pytest.mark.usefixtures("one_torch_thread")

INFO = BACKBONES["efficientnet_lite0"]
PREP = Preprocessing.for_size(64, INFO.mean, INFO.std)
TORCH = Caching(runtime="torch")  # the order of events is the point here, not the runtime: no OpenVINO conversion


def _cache(data: TrainingData, store: CacheStore | None = None) -> ViewCache:
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 2, pretrained=True).eval()
    split_at = len(model.stages) - INFO.finetune_stages
    return build_cache(model, data.train, data.val, PREP, 2, split_at, True, 4, 0, lambda n: None, store=store,
                       key="trunk" if store else None)


def test_files_that_fail_to_decode_during_the_pass_are_skipped_as_before(shapes: Path, tmp_path: Path) -> None:
    """A corrupt file in the middle of a class, in train and in val, and an empty one: the same skipped list, splits
    and cached outputs as when everything is decoded before the pass; the corrupt files' rows are never stored."""
    root = tmp_path / "data"
    shutil.copytree(shapes, root)
    clean = load_dataset(root, 0.3, 0, PREP.resize)
    train_bad, val_bad = clean.train.paths[len(clean.train) // 2], clean.val.paths[-2]
    (root / train_bad).write_bytes(b"\xff\xd8 truncated")  # header unreadable: found only when decoded
    (root / val_bad).write_text("not an image")
    (root / clean.train.paths[1]).write_bytes(b"")  # cannot even be read: found when scanned
    before = load_dataset(root, 0.3, 0, PREP.resize)
    streamed = load_dataset(root, 0.3, 0, PREP.resize, stream=True)
    # Until settled, the splits hold every file that could be read, the corrupt ones too.
    bad_rows = [streamed.train.paths.index(train_bad)], [streamed.val.paths.index(val_bad)]
    store = CacheStore(tmp_path / "store", 64)
    cache = _cache(streamed, store)
    assert streamed.settle() == bad_rows
    cache = cache.without(*bad_rows)
    assert streamed.skipped == before.skipped
    assert [s["path"] for s in before.skipped] == [clean.train.paths[1], train_bad, val_bad]
    assert before.skipped[0]["reason"] == "empty file"
    assert all(s["reason"].startswith("not an image or corrupt") for s in before.skipped[1:])
    for got, want in ((streamed.train, before.train), (streamed.val, before.val)):
        assert (got.paths, got.labels, got.digests) == (want.paths, want.labels, want.digests)
        assert all(np.array_equal(a, b) for a, b in zip(got.images, want.images))
    want = _cache(before)
    for name in ("train_pooled", "val_pooled", "train_maps", "val_maps", "val_mirror_pooled"):
        torch.testing.assert_close(getattr(cache, name), getattr(want, name), rtol=1e-5, atol=1e-5)
    assert store.writes == len(before.train) * 3 + len(before.val) * 2  # views 0-2 of train, plain and mirror of val


class _HeldDecode:
    """Holds the decode of one file until released (or a timeout), and records the order of events."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path, timeout: float = 120) -> None:
        self.held, self.timeout = path.read_bytes(), timeout
        self.events: list[str] = []
        self.release = threading.Event()
        decode = cache_store.decode_bytes

        def held_decode(data: np.ndarray, *args: Any) -> np.ndarray:  # noqa: ANN401 - decode_bytes' own arguments
            if data.tobytes() == self.held:
                self.events.append("held file decoded" if self.release.wait(self.timeout) else "timed out")
            return decode(data, *args)

        monkeypatch.setattr(cache_store, "decode_bytes", held_decode)

    def on_progress(self, event: dict[str, Any]) -> None:
        if event["phase"] == "caching" and "pass started" not in self.events:
            self.events.append("pass started")
            self.release.set()


def _last_file(root: Path) -> Path:
    """The file decoded last in a TINY_TRAIN job: the last val file of the last class."""
    spec = TrainSpec(**TINY_TRAIN)
    data = load_dataset(root, spec.val_split, spec.seed, PREP.resize)
    return root / data.val.paths[-1]


def test_a_streamed_load_returns_before_any_image_is_decoded(shapes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file is read and hashed, none decoded yet: the reads never queue behind the decodes."""
    released = threading.Event()
    events: list[str] = []
    decode = cache_store.decode_bytes

    def held_decode(data: np.ndarray, *args: Any) -> np.ndarray:  # noqa: ANN401 - decode_bytes' own arguments
        if not released.wait(60):
            events.append("timed out")
            released.set()  # one timeout tells: the others need not wait too
        return decode(data, *args)

    monkeypatch.setattr(cache_store, "decode_bytes", held_decode)
    data = load_dataset(shapes, 0.3, 0, PREP.resize, stream=True, cache_mb=0)
    events.append("loaded")
    released.set()
    assert events == ["loaded"]
    assert len(data.train) + len(data.val) == 20 and len(set(data.train.digests + data.val.digests)) == 20
    assert data.settle() == ([], []) and data.train.images.nbytes == 0  # cache_mb=0: no pixels kept in memory


def test_the_trunk_pass_starts_before_the_last_file_is_decoded(shapes: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    held = _HeldDecode(monkeypatch, _last_file(shapes))
    spec = TrainSpec(**{**TINY_TRAIN, "mode": "linear", "epochs": 1})
    result = fit(shapes, spec, tmp_path / "job", tmp_path / "model", on_progress=held.on_progress, caching=TORCH)
    assert held.events == ["pass started", "held file decoded"]
    assert result.metrics["train_images"] + result.metrics["val_images"] == 20 and not result.skipped_files


def test_a_cancel_during_the_pass_does_not_wait_for_the_decodes(shapes: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    held = _HeldDecode(monkeypatch, _last_file(shapes), timeout=120)
    held.release = threading.Event()  # never set by the pass: only the test lets the held decode go
    started = threading.Event()

    def on_progress(event: dict[str, Any]) -> None:
        if event["phase"] == "caching":
            started.set()

    spec = TrainSpec(**{**TINY_TRAIN, "mode": "linear", "epochs": 1})
    with pytest.raises(Stopped):
        fit(shapes, spec, tmp_path / "job", tmp_path / "model", on_progress=on_progress, should_stop=started.is_set,
            caching=TORCH)
    assert held.events == []  # the held decode is still waiting: fit returned without it
    held.release.set()


def test_a_class_whose_every_file_fails_to_decode_is_refused(shapes: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(shapes, root)
    for path in (root / "circles").iterdir():
        path.write_text("not an image")
    with pytest.raises(DatasetError, match="no readable training image: circles"):
        fit(root, TrainSpec(**{**TINY_TRAIN, "mode": "linear", "epochs": 1}), tmp_path / "job", tmp_path / "model")
