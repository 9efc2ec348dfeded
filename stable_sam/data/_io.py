"""Atomic file writes and image reading shared by the data and evaluation modules."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Calls `write(tmp_path)` on a temp file in `path`'s folder, then renames it onto `path`.

    Readers never see a half-written file: the rename is atomic on one filesystem, which is why
    the temp file lives in the destination folder rather than in /tmp.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return write_atomic(path, _write)


def _finite(obj: Any) -> Any:
    # JSON has no NaN; an undefined metric is written as null.
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Writes strict JSON (NaN becomes null) atomically."""
    return write_text_atomic(path, json.dumps(_finite(obj), indent=1, allow_nan=False) + "\n")


def write_image_atomic(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Writes an RGB (HxWx3) or grayscale (HxW) uint8 image; the format follows the suffix."""
    path = Path(path)
    bgr = image[..., ::-1] if image.ndim == 3 else image
    ok, buf = cv2.imencode(path.suffix, np.ascontiguousarray(bgr))
    if not ok:
        raise OSError(f"could not encode image for {path}")

    def _write(tmp: str) -> None:
        buf.tofile(tmp)

    return write_atomic(path, _write)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as uint8 HxWx3 RGB; a missing or unreadable file names itself."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"could not read image file (corrupt or unsupported format): {path}")
    return np.ascontiguousarray(image[..., ::-1])


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Reads a mask file as uint8 HxW (channel 0 when the file has colour channels)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError(f"could not read mask file (corrupt or unsupported format): {path}")
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.dtype != np.uint8:
        raise ValueError(f"mask file {path} has dtype {mask.dtype}, expected 8-bit")
    return mask
