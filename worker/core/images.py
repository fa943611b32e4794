"""Image decoding with OpenCV (reduced-scale JPEG decode), Pillow only for formats OpenCV cannot read."""
from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


class ImageError(ValueError):
    """A file that is not a readable image (empty, corrupt, not an image, or too large)."""


def _header_size(path: Path | BinaryIO) -> tuple[int, int]:
    """Width and height from the file header alone (no pixel decode); ImageError when there is no usable header.

    A file whose header Pillow cannot read is refused rather than handed to OpenCV blind: without a size
    there is no pixel check, and OpenCV would allocate whatever a hostile header asks for.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we apply our own pixel limit
            with Image.open(path) as img:
                return img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any header failure means "not an image we can read"
        raise ImageError(f"not an image or corrupt ({type(exc).__name__})") from None


def _pillow_decode(path: Path | BinaryIO) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            img.seek(0)  # first frame of a GIF
            return np.asarray(img.convert("RGB"))


def check_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    """Raise ImageError when width x height exceeds max_pixels (None: no limit)."""
    if max_pixels and size[0] * size[1] > max_pixels:
        raise ImageError(f"image too large: {size[0]}x{size[1]} pixels exceeds the limit of {max_pixels}")


def read_bytes(path: str | Path) -> np.ndarray:
    """The file's bytes as a uint8 array; ImageError when it cannot be read or is empty."""
    try:
        data = np.fromfile(Path(path), dtype=np.uint8)  # fromfile+imdecode: any file name, no locale issues
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    if data.size == 0:
        raise ImageError("empty file")
    return data


def decode_image(path: str | Path, short_side: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode path to an RGB uint8 array whose shorter side is short_side; raise ImageError if it cannot."""
    return decode_bytes(read_bytes(path), short_side, max_pixels)


def check_header(data: np.ndarray, max_pixels: int | None) -> tuple[int, int]:
    """Width and height from the header of a file's bytes; ImageError when unreadable or over max_pixels."""
    size = _header_size(io.BytesIO(data.data))
    check_pixels(size, max_pixels)
    return size


def decode_bytes(data: np.ndarray, short_side: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """decode_image on a file's bytes already read (read_bytes): callers that also hash them read the file once."""
    size = check_header(data, max_pixels)
    flag = cv2.IMREAD_COLOR
    # Let libjpeg scale while decoding: a 12 MP photo decoded at 1/8 costs a fraction of a full decode.
    for factor, reduced in _REDUCED:
        if min(size) // factor >= short_side:
            flag = reduced
            break
    img = cv2.imdecode(data, flag)
    if img is not None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        try:
            img = _pillow_decode(io.BytesIO(data.data))
        except Exception as exc:  # noqa: BLE001 - every decoder failure becomes one readable error
            raise ImageError(f"not an image or corrupt ({type(exc).__name__})") from None
    return resize_short_side(img, short_side)


def resize_short_side(img: np.ndarray, short_side: int) -> np.ndarray:
    """Resize so the shorter side equals short_side, keeping the aspect ratio."""
    h, w = img.shape[:2]
    if min(h, w) == short_side:
        return np.ascontiguousarray(img)
    scale = short_side / min(h, w)
    new_w, new_h = max(short_side, round(w * scale)), max(short_side, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (new_w, new_h), interpolation=interp)
