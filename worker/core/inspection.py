"""Dataset inspection: what is wrong with a folder of images, judged by content, before any training.

Pure: no Flask, Celery or SQLAlchemy. Uses the same file discovery as training (worker.core.dataset), so
hidden files and OS junk are ignored here exactly as they are there.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image, UnidentifiedImageError

from graft.shared.files import display_name, is_junk_name
from graft.worker.core.dataset import find_files

IMBALANCE_RATIO = 10.0  # above this largest/smallest class ratio: a warning, and training weights classes
MIN_IMAGES, FEW_IMAGES = 2, 10  # a class below MIN_IMAGES readable images is an error, below FEW a warning
MAX_LISTED = 1000  # files named per issue (the count is always complete)
CONVERSIONS = ("grayscale", "alpha", "palette", "cmyk", "16bit", "exif_orientation")
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")
_GRAY = {"1", "L", "LA", "La", "I", "F"}
FILE_PROBLEMS = {  # status -> (code, message template)
    "zero_byte": ("zero_byte", "{n} empty (0-byte) file(s), skipped"),
    "not_image": ("not_image", "{n} file(s) are not images (judged by content, not extension), skipped"),
    "truncated": ("truncated", "{n} image(s) are truncated, skipped"),
    "corrupt": ("corrupt", "{n} image(s) are corrupt and cannot be decoded, skipped"),
    "unreadable": ("unreadable", "{n} file(s) cannot be read, skipped"),
    "too_large": ("too_large", "{n} image(s) exceed the limit of {limit} pixels and are refused"),
}


@dataclass(frozen=True)
class FileCheck:
    """The verdict on one file: "ok" or a problem, its content hash, and the conversions loading applies."""

    status: str
    detail: str = ""
    sha256: str | None = None
    conversions: tuple[str, ...] = ()


def _conversions(img: Image.Image, head: bytes) -> tuple[str, ...]:
    mode, found = img.mode, []
    if mode in _GRAY or mode.startswith("I;16"):
        found.append("grayscale")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        found.append("alpha")
    if mode in ("P", "PA"):
        found.append("palette")
    if mode == "CMYK":
        found.append("cmyk")
    png16 = head.startswith(b"\x89PNG") and len(head) > 24 and head[24] == 16
    tiff16 = img.format == "TIFF" and 16 in tuple(getattr(img, "tag_v2", {}).get(258, ()) or ())
    if mode.startswith("I;16") or png16 or tiff16:
        found.append("16bit")
    if img.getexif().get(0x0112, 1) not in (0, 1):
        found.append("exif_orientation")
    return tuple(found)


def check_image(path: Path, max_pixels: int | None) -> FileCheck:
    """Open path by content, refuse it over max_pixels before decoding, then decode it to find truncation."""
    try:
        if path.stat().st_size == 0:
            return FileCheck("zero_byte", "empty file")
        with open(path, "rb") as handle:
            head = handle.read(32)
            handle.seek(0)
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        return FileCheck("unreadable", f"cannot read file: {exc.strerror or exc}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return FileCheck("too_large", str(exc), digest)
    except UnidentifiedImageError:
        if head.startswith(_SIGNATURES):
            return FileCheck("corrupt", "has an image signature but no readable header", digest)
        return FileCheck("not_image", "not an image format Graft can read", digest)
    except Exception as exc:  # noqa: BLE001 - any other header failure is a corrupt file
        return FileCheck("corrupt", f"{type(exc).__name__}: {exc}", digest)
    with img:
        width, height = img.size
        if max_pixels and width * height > max_pixels:
            return FileCheck("too_large", f"{width}x{height} pixels exceeds the limit of {max_pixels}", digest)
        try:
            conversions = _conversions(img, head)
            if img.format == "JPEG":
                img.draft("RGB", (64, 64))  # DCT scaling: every byte is still decoded, so truncation shows
            img.load()
        except OSError as exc:
            status = "truncated" if "truncated" in str(exc) else "corrupt"
            return FileCheck(status, str(exc), digest)
        except Exception as exc:  # noqa: BLE001 - a decoder failure of any kind
            return FileCheck("corrupt", f"{type(exc).__name__}: {exc}", digest)
    return FileCheck("ok", "", digest, conversions)


def _issue(level: str, code: str, message: str, files: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    listed = sorted(files)
    return {"level": level, "code": code, "message": message, "files": listed[:MAX_LISTED], "count": len(listed),
            **extra}


def _ignored_entries(root: Path, layout: str) -> list[str]:
    """Non-junk files and folders that no class folder holds: present, but not used for training."""
    def entries(folder: Path) -> list[Path]:
        return [p for p in sorted(folder.iterdir()) if not is_junk_name(p.name)]

    if layout == "folders":
        return [p.name for p in entries(root) if not p.is_dir()]
    found = [p.name for p in entries(root) if p.name not in ("train", "val")]
    for split in ("train", "val"):
        found += [f"{split}/{p.name}" for p in entries(root / split) if not p.is_dir()]
    return found


def _class_issues(classes: list[str], counts: dict[str, int]) -> list[dict[str, Any]]:
    issues = []
    if len(classes) < 2:
        issues.append(_issue("error", "too_few_classes",
                             f"need at least 2 classes (one subfolder each), found {len(classes)}: {classes}"))
    for name in classes:
        if counts[name] < MIN_IMAGES:
            issues.append(_issue("error", "class_too_small", f"class {name!r} has {counts[name]} readable "
                                 f"image(s); at least {MIN_IMAGES} are needed", classes=[name]))
    few = [n for n in classes if MIN_IMAGES <= counts[n] < FEW_IMAGES]
    if few:
        listed = ", ".join(f"{n} ({counts[n]})" for n in few)
        issues.append(_issue("warning", "class_small", f"classes with fewer than {FEW_IMAGES} readable images: "
                             f"{listed}", classes=few))
    usable = {n: c for n, c in counts.items() if c > 0}
    if len(usable) >= 2:
        big, small = max(usable, key=usable.get), min(usable, key=usable.get)
        ratio = usable[big] / usable[small]
        if ratio > IMBALANCE_RATIO:
            issues.append(_issue("warning", "class_imbalance", f"class {big!r} has {ratio:.1f}x the images of "
                                 f"class {small!r} (above {IMBALANCE_RATIO:g}); training weights the classes",
                                 classes=[big, small], ratio=round(ratio, 2)))
    return issues


def _duplicate_issues(groups: list[list[tuple[str, str, str]]], layout: str) -> list[dict[str, Any]]:
    """Issues for groups of identical files, each entry (split, class, relative path)."""
    found: dict[str, list[list[str]]] = defaultdict(list)
    for group in groups:
        paths = [path for _, _, path in group]
        if len({cls for _, cls, _ in group}) > 1:
            found["duplicate_across_classes"].append(paths)
            continue
        if len({split for split, _, _ in group}) > 1:
            found["duplicate_train_val"].append(paths)
        if any(sum(1 for s, _, _ in group if s == split) > 1 for split in ("train", "val")):
            found["duplicate_within_class"].append(paths)
    where = " (they may land in both train and val)" if layout == "folders" else ""
    texts = {
        "duplicate_across_classes": ("error", "{n} identical image(s) are in more than one class: a labelling mistake"),
        "duplicate_train_val": ("warning", "{n} identical image(s) are in both train/ and val/: validation leaks"),
        "duplicate_within_class": ("warning", "{n} image(s) are exact duplicates within their class" + where),
    }
    issues = []
    for code, (level, text) in texts.items():
        if found[code]:
            files = [p for g in found[code] for p in g]
            issues.append(_issue(level, code, text.format(n=len(files)), files, groups=found[code][:MAX_LISTED]))
    return issues


def inspect_dataset(
    root: str | Path, max_pixels: int | None, threads: int | None = None, non_utf8: Iterable[str] = (),
    roots: Sequence[Path] | None = None,
) -> dict[str, Any]:
    """The inspection report for the dataset at root (raises DatasetError when root is not a folder).

    With roots, files and folders whose real path leaves them (symlinks) are not read and are reported.
    """
    root = Path(root)
    outside: list[str] = []
    classes, train, val = find_files(root, roots, outside)
    layout = "folders" if val is None else "train_val"
    entries = [("train", c, p) for c in classes for p in train[c]] + \
              [("val", c, p) for c in classes for p in (val or {}).get(c, [])]
    with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
        checks = list(pool.map(lambda entry: check_image(entry[2], max_pixels), entries))
    counts = {c: 0 for c in classes}
    splits: dict[str, dict[str, int]] = {"train": dict(counts), "val": dict(counts)}
    conversions = {name: 0 for name in CONVERSIONS}
    problems: dict[str, dict[str, str]] = defaultdict(dict)
    by_hash: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    escaped: set[str] = set()
    for (split, cls, path), check in zip(entries, checks):
        raw = path.relative_to(root).as_posix()
        rel = display_name(raw)  # a name that is not UTF-8 is read all the same, and reported escaped
        if rel != raw:
            escaped.add(rel)
        if check.status != "ok":
            problems[check.status][rel] = check.detail
            continue
        counts[cls] += 1
        splits[split][cls] += 1
        for name in check.conversions:
            conversions[name] += 1
        by_hash[check.sha256].append((split, cls, rel))
    issues = _class_issues(classes, counts)
    for status, (code, text) in FILE_PROBLEMS.items():
        if problems[status]:
            details = dict(sorted(problems[status].items())[:MAX_LISTED])
            issues.append(_issue("warning", code, text.format(n=len(problems[status]), limit=max_pixels),
                                 problems[status], details=details))
    issues += _duplicate_issues([g for g in by_hash.values() if len(g) > 1], layout)
    ignored = _ignored_entries(root, layout)
    if ignored:
        issues.append(_issue("warning", "ignored_files", f"{len(ignored)} file(s) or folder(s) outside the class "
                             "folders are not used", ignored))
    if outside:
        issues.append(_issue("warning", "outside_roots", f"{len(outside)} file(s) or folder(s) lead outside the data "
                             "roots through a symlink; they are not read", sorted(outside)))
    renamed = sorted(set(non_utf8) | escaped)
    if renamed:
        issues.append(_issue("warning", "non_utf8_name", f"{len(renamed)} file name(s) were not valid UTF-8; they "
                             "are shown with each such byte as %XX (and % as %25)", renamed))
    issues.sort(key=lambda i: i["level"] != "error")  # errors first: a failing job quotes the first ones
    return {
        "layout": layout, "classes": counts, "num_images": sum(counts.values()), "num_files": len(entries),
        "splits": splits if layout == "train_val" else None, "conversions": conversions, "issues": issues,
        "max_pixels": max_pixels,
    }
