"""Atomic file writes shared by every module that writes a file (images are read in
`stable_sam.data.image_files`, re-exported here)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from stable_sam.data.image_files import ImageReadError, read_gray, read_rgb  # noqa: F401


def current_umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def fsync_path(path: str | os.PathLike) -> None:
    """Flushes a file, or a folder's entries (after a rename into it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[str], None], *,
                 durable: bool = False) -> Path:
    """Calls `write(tmp_path)` on a temp file in `path`'s folder, then renames it onto `path`.

    Readers never see a half-written file: the rename is atomic on one filesystem, which is why
    the temp file lives in the destination folder rather than in /tmp. The file gets the mode a
    plain open() would give it (mkstemp's is 0600). `durable` (checkpoints, weights) fsyncs the
    file before the rename and the folder after it, so a power cut keeps the old or the new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        fsync_path(path.parent)
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


def append_json_line(path: str | os.PathLike, obj: Any) -> Path:
    """Appends `obj` as one line of JSON to a log (JSON Lines), creating its folder: an
    experiment log grows by whole runs, so a line is written in one call."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(obj) + "\n")
    return path


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
