"""Datasets: uploads refused safely, the inspection report, and training on a dataset id (real services)."""
from __future__ import annotations

import io
import os
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
from PIL import Image

from cli.sampledata import make_shapes_dataset
from shared import jobs as sm
from shared.db import session_scope
from tests.conftest import HYMENOPTERA, ROOT, TOKEN, wait_for_job

MB = 1024 * 1024
TINY = {"backbone": "resnet18", "pretrained": False, "image_size": 64, "epochs": 1, "batch_size": 8}
JUNK = {".DS_Store", "__MACOSX", "Thumbs.db", "desktop.ini", ".thumbs", "._c0.png", ".git"}


# ---- archive builders -------------------------------------------------------------------------------------------

def _image(seed: int, ext: str = ".png", size: int = 20) -> bytes:
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(ext, rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


def _good(prefix: str = "", per_class: int = 3) -> dict[str, bytes]:
    return {f"{prefix}{cls}/{cls[0]}{i}.png": _image(seed * 100 + i)
            for seed, cls in enumerate(("cats", "dogs")) for i in range(per_class)}


def _zip(entries: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


def _tar(entries: dict[str, bytes], extra: list[tarfile.TarInfo] = (), mode: str = "w:gz") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.GNU_FORMAT, errors="surrogateescape") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return out.getvalue()


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.devmajor, info.devminor = kind, linkname, 1, 3
    return info


def _huge_png(side: int = 30000) -> bytes:
    """A 1-bit side x side PNG: about 110 KB on disk, 900 megapixels decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)
    idat = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _zip_symlink() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in _good().items():
            archive.writestr(name, data)
        info = zipfile.ZipInfo("cats/link.png")
        info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    return out.getvalue()


def _zip_non_utf8() -> bytes:
    data = _zip({**_good(), "cats/cafX.png": _image(77)})
    return data.replace(b"cats/cafX.png", b"cats/caf\xe9.png")  # raw Latin-1 bytes, no UTF-8 flag


def _zip_duplicate() -> bytes:
    """The same name twice: the first copy is written before the second is refused (a partial extraction)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name
        return _zip_pairs([*_good().items(), ("cats/zz.png", _image(1)), ("cats/zz.png", _image(2))])


def _zip_pairs(entries: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return out.getvalue()


def _truncated_jpeg() -> bytes:
    data = _image(5, ".jpg", size=120)
    return data[: len(data) // 2]


# (id, builder returning (body, filename), expected status, error code (4xx) or issue code (201), file named)
CASES: list[tuple[str, Callable[[], tuple[bytes, str]], int, str | None, str | None]] = [
    ("dotdot", lambda: (_zip({**_good(), "../escape.png": _image(1)}), "a.zip"), 400, "parent_path", None),
    ("absolute", lambda: (_tar({**_good(), "/tmp/graft-escape.png": _image(1)}), "a.tgz"), 400, "absolute_path", None),
    ("tar-symlink", lambda: (_tar(_good(), [_special("cats/l.png", tarfile.SYMTYPE, "/etc/passwd")]), "a.tgz"),
     400, "symlink", None),
    ("zip-symlink", lambda: (_zip_symlink(), "a.zip"), 400, "symlink", None),
    ("hardlink", lambda: (_tar(_good(), [_special("dogs/h.png", tarfile.LNKTYPE, "cats/c0.png")]), "a.tgz"),
     400, "hardlink", None),
    ("device", lambda: (_tar(_good(), [_special("cats/null", tarfile.CHRTYPE)]), "a.tar"), 400, "special_file", None),
    ("zip-bomb", lambda: (_zip({**_good(), "cats/b.png": b"\0" * 2 * MB}, zipfile.ZIP_DEFLATED), "a.zip"),
     400, "ratio", None),
    ("tar-bomb", lambda: (_tar({**_good(), "cats/b.png": b"\0" * 3 * MB}), "a.tgz"), 400, "ratio", None),
    ("too-many-members", lambda: (_zip({f"c{i % 2}/{i}.png": b"x" for i in range(60)}), "a.zip"),
     400, "too_many_members", None),
    ("too-many-bytes", lambda: (_zip({f"cats/{i}.bin": b"\0" * 900_000 for i in range(5)}, zipfile.ZIP_DEFLATED),
                                "a.zip"), 400, "too_large", None),
    ("duplicate-member", lambda: (_zip_duplicate(), "a.zip"), 400, "duplicate", None),
    ("file-and-folder", lambda: (_zip({**_good(), "cats/x": b"file", "cats/x/y.png": _image(3)}), "a.zip"),
     400, "duplicate", None),
    ("not-an-archive", lambda: (b"hello, world\n" * 50, "a.zip"), 400, "not_archive", None),
    ("empty-zip", lambda: (_zip({}), "a.zip"), 400, "empty", None),
    ("empty-tar", lambda: (_tar({}), "a.tgz"), 400, "empty", None),
    ("oversized-body", lambda: (os.urandom(MB + MB // 2), "a.zip"), 413, None, None),
    ("huge-png", lambda: (_zip({**_good(), "cats/huge.png": _huge_png()}, zipfile.ZIP_DEFLATED), "a.zip"),
     201, "too_large", "cats/huge.png"),
    ("truncated-jpeg", lambda: (_zip({**_good(), "dogs/cut.jpg": _truncated_jpeg()}), "a.zip"),
     201, "truncated", "dogs/cut.jpg"),
    ("text-as-jpg", lambda: (_zip({**_good(), "cats/notes.jpg": b"shopping list\n"}), "a.zip"),
     201, "not_image", "cats/notes.jpg"),
    ("zero-byte", lambda: (_zip({**_good(), "dogs/empty.png": b""}), "a.zip"), 201, "zero_byte", "dogs/empty.png"),
    ("single-class", lambda: (_zip({"only/a.png": _image(1), "only/b.png": _image(2)}), "a.zip"),
     201, "too_few_classes", None),
    ("nested-junk", lambda: (_zip({**_good("set/"), "set/.DS_Store": b"\0\0\0\1Bud1", "__MACOSX/set/cats/._c0.png":
                                   b"\0", "set/cats/.thumbs/t.png": _image(9), "set/dogs/Thumbs.db": b"\xd0\xcf",
                                   "set/dogs/sub/desktop.ini": b"[x]", ".git/HEAD": b"ref"}), "a.zip"),
     201, None, None),
    ("non-utf8-zip", lambda: (_zip_non_utf8(), "a.zip"), 201, "non_utf8_name", "cats/caf\u0398.png"),
    ("non-utf8-tar", lambda: (_tar({**_good(), b"dogs/hund\xe9.png".decode("utf-8", "surrogateescape"): _image(78)}),
                              "a.tgz"), 201, "non_utf8_name", "dogs/hund\u00e9.png"),
]


# ---- fixtures -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_app(service_config):  # noqa: ANN001, ANN201
    """The API with small limits, so the oversize cases need small bodies only."""
    from api import create_app

    return create_app(service_config.replace(max_body_mb=1, archive_max_members=50, archive_max_bytes=4 * MB))


def _client(app):  # noqa: ANN001, ANN202
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return test_client


def _upload(client, body: bytes, filename: str, name: str | None = None):  # noqa: ANN001, ANN202
    """POST a multipart body built here (as bytes: the test client would spool big ones to an unclosed file)."""
    boundary = "graft-test-boundary"
    head = b""
    if name is not None:
        head = f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n".encode()
    head += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
             "Content-Type: application/octet-stream\r\n\r\n").encode()
    data = head + body + f"\r\n--{boundary}--\r\n".encode()
    return client.post("/api/v1/datasets", data=data, content_type=f"multipart/form-data; boundary={boundary}")


def _stored(config) -> set[str]:  # noqa: ANN001
    folder = config.datasets_dir
    return {p.name for p in folder.iterdir() if p.name != ".staging"} if folder.is_dir() else set()


def _staging_empty(config) -> bool:  # noqa: ANN001
    staging = config.datasets_dir / ".staging"
    return not staging.exists() or not any(staging.iterdir())


# ---- the table of bad inputs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("build", "status", "code", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_inputs_are_refused_or_reported(small_app, service_config, build, status: int, code: str | None,
                                            named: str | None) -> None:  # noqa: ANN001
    client = _client(small_app)
    before = _stored(service_config)
    response = _upload(client, *build())
    payload = response.get_json()
    assert response.status_code == status, payload
    assert response.headers["Content-Type"] == "application/json"
    assert _staging_empty(service_config)  # nothing half-extracted is left behind
    if status >= 400:
        assert payload["error"] and payload["status"] == status
        if code:
            assert payload["code"] == code, payload
        assert _stored(service_config) == before  # nothing stored
    else:
        assert _stored(service_config) == before | {payload["id"]}
        folder = service_config.datasets_dir / payload["id"]
        assert not {p.name for p in folder.rglob("*")} & JUNK  # junk was never written
        codes = {issue["code"]: issue for issue in payload["issues"]}
        if code:
            assert code in codes, payload["issues"]
            if named:
                assert named in codes[code]["files"]
        else:  # nested junk: silently ignored, the wrapper folder stepped into
            assert payload["classes"] == {"cats": 3, "dogs": 3} and set(codes) == {"class_small"}
        assert payload["has_errors"] == (code == "too_few_classes")
    assert client.get("/healthz").status_code == 200


def test_body_over_the_limit_is_counted_while_streaming(small_app, service_config) -> None:  # noqa: ANN001
    """No Content-Length (a chunked upload): the bytes are counted as they arrive and refused past the limit."""
    client = _client(small_app)
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.zip\"\r\n\r\n".encode()
            + b"\0" * (MB + 4096) + f"\r\n--{boundary}--\r\n".encode())
    before = _stored(service_config)
    response = client.post("/api/v1/datasets", input_stream=io.BytesIO(body),
                           content_type=f"multipart/form-data; boundary={boundary}",
                           environ_overrides={"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    assert response.status_code == 413 and "GRAFT_MAX_UPLOAD_MB" in response.get_json()["error"]
    assert _stored(service_config) == before and _staging_empty(service_config)


def test_requests_without_an_archive_are_4xx(client) -> None:  # noqa: ANN001
    assert client.post("/api/v1/datasets", data=b"x", content_type="application/zip").status_code == 415
    response = client.post("/api/v1/datasets", data={"other": "x"}, content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json()["field"] == "file"
    assert client.post("/api/v1/datasets", json={"path": "/etc"}).get_json()["field"] == "path"
    assert client.get("/api/v1/datasets/nope").status_code == 404
    assert client.delete("/api/v1/datasets/nope").status_code == 404


# ---- the inspection report (pure core) ------------------------------------------------------------------------------

def _save(path: Path, img: Image.Image, **kwargs) -> Path:  # noqa: ANN003
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _picture(seed: int, size: tuple[int, int] = (24, 20)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_report_counts_conversions_by_content(tmp_path: Path) -> None:
    from worker.core.inspect import inspect_dataset

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
    from worker.core.inspect import inspect_dataset

    root = tmp_path / "dups"
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            for i in range(3):
                _save(root / split / cls / f"{i}.png", _picture(hash((split, cls, i)) % 1000))
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


def test_imbalance_is_reported_and_training_weights_classes(tmp_path: Path) -> None:
    from worker.core.inspect import inspect_dataset
    from worker.core.train import TrainSpec, class_weights, fit

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

    from worker.core.images import ImageError, decode_image

    path = tmp_path / "huge.png"
    path.write_bytes(_huge_png())
    started = time.monotonic()
    with pytest.raises(ImageError, match="too large"):
        decode_image(path, 64)
    small = tmp_path / "small.png"
    _save(small, _picture(1, (30, 30)))
    with pytest.raises(ImageError, match="30x30 pixels exceeds the limit of 800"):
        decode_image(small, 16, max_pixels=800)
    assert time.monotonic() - started < 2


# ---- datasets as a service: train on one, delete, server paths, the CLI ---------------------------------------------

def _tar_folder(folder: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        archive.add(folder, arcname=".")  # a "./" entry first, as `tar -C folder -czf x.tgz .` writes
    return out.getvalue()


def test_train_on_an_uploaded_dataset_and_delete_it(client, worker, service_config, tmp_path: Path) -> None:  # noqa: ANN001
    shapes = make_shapes_dataset(tmp_path / "shapes", per_class=6, size=64, classes=("circles", "squares"))
    response = _upload(client, _tar_folder(shapes), "shapes.tar.gz")
    assert response.status_code == 201, response.get_json()
    dataset = response.get_json()
    assert response.headers["Location"].endswith(f"/api/v1/datasets/{dataset['id']}")
    assert dataset["name"] == "shapes" and dataset["classes"] == {"circles": 6, "squares": 6}
    assert dataset["num_images"] == 12 and not dataset["has_errors"] and dataset["layout"] == "folders"
    assert client.get(f"/api/v1/datasets/{dataset['id']}").get_json()["issues"] == dataset["issues"]
    listed = client.get("/api/v1/datasets?limit=100").get_json()["items"]
    assert dataset["id"] in {d["id"] for d in listed}

    job = client.post("/api/v1/jobs/train", json={"dataset_id": dataset["id"], **TINY}).get_json()
    assert job["params"]["dataset_id"] == dataset["id"]
    job = wait_for_job(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert client.get(f"/api/v1/models/{job['model_id']}").get_json()["classes"] == ["circles", "squares"]

    with session_scope(service_config.database_url) as session:  # a queued job (never enqueued) holds the dataset
        holder = sm.create_job(session, "train", {"dataset_id": dataset["id"], "data_dir": dataset["path"]}).id
    busy = client.delete(f"/api/v1/datasets/{dataset['id']}")
    assert busy.status_code == 409 and busy.get_json()["jobs"] == [holder]
    assert client.post(f"/api/v1/jobs/{holder}/cancel").status_code == 200
    assert client.delete(f"/api/v1/datasets/{dataset['id']}").status_code == 200
    assert not Path(dataset["path"]).exists()
    assert client.get(f"/api/v1/datasets/{dataset['id']}").status_code == 404


def test_a_dataset_with_errors_fails_its_training_job_at_once(client) -> None:  # noqa: ANN001
    dataset = _upload(client, _zip({"only/a.png": _image(1), "only/b.png": _image(2)}), "one.zip").get_json()
    assert dataset["has_errors"] and dataset["issues"][0]["code"] == "too_few_classes"
    response = client.post("/api/v1/jobs/train", json={"dataset_id": dataset["id"], **TINY})
    job = response.get_json()
    assert response.status_code == 202 and job["status"] == "failed"  # no worker involved
    assert job["error"].startswith(f"dataset {dataset['id']} has errors: need at least 2 classes")
    both = client.post("/api/v1/jobs/train", json={"dataset_id": dataset["id"], "data_dir": "/x"})
    assert both.status_code == 400 and "exactly one" in both.get_json()["error"]
    missing = client.post("/api/v1/jobs/train", json={"dataset_id": "0" * 32})
    assert missing.status_code == 404 and missing.get_json()["field"] == "dataset_id"


def test_a_server_folder_is_inspected_in_place(client, data_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    folder = make_shapes_dataset(data_root / "in-place", per_class=3, size=40, classes=("circles", "squares"))
    (folder / "circles" / "notes.jpg").write_text("not an image")
    response = client.post("/api/v1/datasets", json={"path": str(folder), "name": "mine"})
    assert response.status_code == 201, response.get_json()
    dataset = response.get_json()
    assert dataset["source"] == "path" and dataset["path"] == str(folder.resolve()) and dataset["name"] == "mine"
    assert {i["code"]: i["files"] for i in dataset["issues"]}["not_image"] == ["circles/notes.jpg"]
    escape = data_root / "escape"
    escape.symlink_to(tmp_path)  # inside the roots by name, outside once symlinks are followed
    assert client.post("/api/v1/datasets", json={"path": str(escape)}).status_code == 400
    assert client.delete(f"/api/v1/datasets/{dataset['id']}").status_code == 200
    assert (folder / "circles").is_dir()  # the user's own folder is never deleted


def test_cli_adds_a_folder_and_shows_the_report(http_app: str, tmp_path: Path) -> None:
    folder = make_shapes_dataset(tmp_path / "my photos", per_class=3, size=40, classes=("circles", "squares"))
    (folder / ".DS_Store").write_bytes(b"junk")
    (folder / "squares" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    env = {**os.environ, "GRAFT_URL": http_app, "GRAFT_TOKEN": TOKEN}

    def graft(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli.main", "datasets", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    added = graft("add", str(folder))
    assert added.returncode == 0, added.stderr
    assert "uploading [" in added.stderr and "100.0%" in added.stderr
    dataset_id = added.stdout.split()[1]
    assert "'my photos': 6 images in 2 classes" in added.stdout and "squares/broken.jpg" in added.stdout
    shown = graft("show", dataset_id)
    assert shown.returncode == 0 and "[corrupt]" in shown.stdout and "circles" in shown.stdout
    assert dataset_id in graft("list").stdout
    assert graft("delete", dataset_id).returncode == 0
    assert "HTTP 404" in graft("show", dataset_id).stderr


@pytest.mark.slow
@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="hymenoptera data set not present")
def test_hymenoptera_zip_report_matches_the_folder_and_trains(client, worker, tmp_path: Path) -> None:  # noqa: ANN001
    archive = tmp_path / "hymenoptera.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(HYMENOPTERA.rglob("*")):
            if path.is_file():
                zf.write(path, Path("hymenoptera") / path.relative_to(HYMENOPTERA))
    response = _upload(client, archive.read_bytes(), archive.name)
    assert response.status_code == 201, response.get_json()
    dataset = response.get_json()
    on_disk = {split: {cls: sum(1 for p in (HYMENOPTERA / split / cls).iterdir() if p.is_file())
                       for cls in ("ants", "bees")} for split in ("train", "val")}
    assert dataset["layout"] == "train_val" and dataset["splits"] == on_disk
    assert dataset["classes"] == {c: on_disk["train"][c] + on_disk["val"][c] for c in ("ants", "bees")}
    # imageNotFound.gif really is a GIF (a 300x300 placeholder picture): a readable, palette image, not an error.
    with Image.open(HYMENOPTERA / "train" / "ants" / "imageNotFound.gif") as gif:
        assert gif.format == "GIF" and gif.size == (300, 300)
    assert not any("train/ants/imageNotFound.gif" in i["files"] for i in dataset["issues"])
    assert dataset["conversions"]["palette"] >= 1 and not dataset["has_errors"]

    body = {"dataset_id": dataset["id"], "backbone": "efficientnet_lite0", "mode": "linear", "epochs": 2,
            "image_size": 128}
    job = wait_for_job(client, client.post("/api/v1/jobs/train", json=body).get_json()["id"], timeout=600)
    assert job["status"] == "succeeded", job["error"]
    assert job["metrics"]["best_val_acc"] > 0.7 and job["metrics"]["val_images"] == 153
