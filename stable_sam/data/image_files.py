"""The one image reader of the package: the CLI, the datasets and evaluation all read pixels here,
so an image means the same pixels on every path.

Pillow decodes; EXIF orientation is applied (a photo is shown upright, and its mask is drawn on
the upright photo); 8-bit, 16-bit and 32-bit integer, float in [0, 1], grey, grey+alpha, RGB,
RGBA (alpha dropped), palette, CMYK and YCbCr come out as uint8. Anything else, a file that is
not an image, and an image over the pixel limit (a decompression bomb: a few KB of header that
would decode to gigabytes) raise `ImageReadError` naming the file, before any pixel is decoded.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["ImageReadError", "MAX_IMAGE_PIXELS", "max_image_pixels", "read_image_header",
           "read_rgb", "read_gray"]

# 12k x 12k: far beyond any dataset image SAM is used on (it resizes to 1024 anyway), far below
# what fills a machine's memory; and below Pillow's own error threshold, so ours speaks first.
MAX_IMAGE_PIXELS = 12288 * 12288
PIXEL_LIMIT_ENV = "STABLE_SAM_MAX_IMAGE_PIXELS"


class ImageReadError(ValueError):
    """An image file that cannot be used; the message names the file and why."""


def max_image_pixels() -> int:
    text = os.environ.get(PIXEL_LIMIT_ENV)
    if text is None:
        return MAX_IMAGE_PIXELS
    try:
        limit = int(text)
    except ValueError:
        raise ImageReadError(f"{PIXEL_LIMIT_ENV}={text!r} is not an integer") from None
    if limit < 1:
        raise ImageReadError(f"{PIXEL_LIMIT_ENV} must be >= 1, is {limit}")
    return limit


def _open(path: Path, what: str):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    limit = max_image_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # Pillow's process-wide check must not undercut ours
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{what} file {path} is a decompression bomb ({exc}); set "
                             f"{PIXEL_LIMIT_ENV} to read it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"could not read {what} file {path} (corrupt or not an image): "
                             f"{exc}") from None
    width, height = im.size
    if width * height > limit:
        im.close()
        raise ImageReadError(
            f"{what} file {path} is {width}x{height} = {width * height} pixels, over the limit of "
            f"{limit} (a decompression bomb, or set {PIXEL_LIMIT_ENV} to read it)")
    return im


def read_image_header(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """(height, width) after EXIF orientation, from the header only (no pixel is decoded)."""
    path = Path(path)
    with _open(path, what) as im:
        width, height = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block: the decoder would ignore it too
            orientation = 1
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _to_uint8(im, path: Path, what: str) -> np.ndarray:
    """uint8 HxW or HxWxC pixels of an oriented image, before any colour conversion."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(im, dtype=np.int64)
        peak = 255 if values.max(initial=0) <= 255 and mode == "I" else 65535
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise ImageReadError(f"{what} file {path} has 32-bit values outside 0..65535")
        return np.round(values * (255.0 / peak)).astype(np.uint8)
    if mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if not np.isfinite(values).all() or values.min(initial=0) < 0 or \
                values.max(initial=0) > 1:
            raise ImageReadError(f"{what} file {path} holds float values outside [0, 1] (or "
                                 "non-finite ones); only [0, 1] float images are read")
        return np.round(values * 255.0).astype(np.uint8)
    return np.asarray(im)


_COLOUR_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La"}


def _decode(path: str | os.PathLike, what: str, grey: bool) -> np.ndarray:
    from PIL import Image, ImageOps

    path = Path(path)
    with _open(path, what) as im:
        try:
            if im.mode not in _COLOUR_MODES and im.mode not in ("I;16", "I;16L", "I;16B",
                                                                  "I;16N", "I", "F"):
                raise ImageReadError(f"{what} file {path} has the unsupported pixel mode "
                                     f"{im.mode!r}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                oriented = ImageOps.exif_transpose(im)
            if oriented.mode in _COLOUR_MODES:
                # Alpha is dropped, not composited: the pixels under it are the image.
                rgb = np.asarray(oriented.convert("RGB"))
                if not grey:
                    return np.ascontiguousarray(rgb)
                if oriented.mode in ("1", "L", "LA", "La"):
                    return np.ascontiguousarray(np.asarray(oriented.convert("L")))
                # A mask saved in colour marks the object in whatever colour it was drawn.
                return np.ascontiguousarray(rgb.max(axis=2))
            pixels = _to_uint8(oriented, path, what)
        except ImageReadError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageReadError(f"could not decode {what} file {path} (truncated or corrupt): "
                                 f"{exc}") from None
    if not grey:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return np.ascontiguousarray(pixels)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as uint8 HxWx3 RGB (see the module docstring for what is read)."""
    return _decode(path, "image", grey=False)


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Reads a mask file as uint8 HxW: grey as it is, colour as its brightest channel, 16-bit
    scaled to 8 bits."""
    return _decode(path, "mask", grey=True)
