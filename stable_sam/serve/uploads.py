"""Uploaded images, decoded in memory (nothing is written to disk) with two limits checked
before any pixel is decoded: the upload's size in bytes and the image's size in pixels (a
decompression bomb is a few KB of header that would decode to gigabytes)."""
from __future__ import annotations

import io
import warnings

import numpy as np

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a large phone photo is under 10 MB
# SAM resizes every image to its input size (1024 px, 256 for the demo model): more pixels only
# cost decode time and memory; 40 Mpx takes any camera's full-size photo.
MAX_UPLOAD_PIXELS = 40_000_000


class UploadError(ValueError):
    """An upload the server refuses; the message is shown on the page as it is."""


def decode_image(data: bytes, max_pixels: int = MAX_UPLOAD_PIXELS) -> np.ndarray:
    """RGB uint8 HxWx3 of an encoded image (any format Pillow reads), upright per its EXIF
    orientation, alpha dropped."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise UploadError("the upload is empty: choose an image file")
    try:
        with warnings.catch_warnings():
            # Our limit below is the one that speaks; Pillow's own bomb check stays as a backstop.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise UploadError(
                        f"the image is {width}x{height} = {width * height} pixels, over the "
                        f"server's limit of {max_pixels} pixels")
                rgb = ImageOps.exif_transpose(im).convert("RGB")
                return np.ascontiguousarray(np.asarray(rgb))
    except UploadError:
        raise
    except Image.DecompressionBombError:
        raise UploadError(f"the image is over the server's limit of {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise UploadError("the upload is not an image the server can read (PNG, JPEG, WebP, "
                          "BMP, TIFF, ...)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UploadError(f"the image could not be decoded (truncated or corrupt): {exc}") from None
