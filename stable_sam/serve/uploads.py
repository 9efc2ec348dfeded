"""Uploaded images, read by the package's one image reader (`stable_sam.data.image_files`, so an
upload gives the same pixels as the same file given to `stable-sam segment`), without touching
the disk: the reader takes a path, and the upload's path is a memory-only file (Linux memfd).

Two limits come first: the upload's size in bytes (checked by the app while the body arrives)
and the image's size in pixels, from its header before any pixel is decoded (a decompression
bomb is a few KB of header that would decode to gigabytes).
"""
from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a large phone photo is under 10 MB
# SAM resizes every image to its input size (1024 px, 256 for the demo model): more pixels only
# cost decode time and memory; 40 Mpx takes any camera's full-size photo.
MAX_UPLOAD_PIXELS = 40_000_000


class UploadError(ValueError):
    """An upload the server refuses; the message is shown on the page as it is."""


@contextlib.contextmanager
def _memory_file(data: bytes):
    """A path whose file holds `data`: in memory on Linux, else in a private temp folder that is
    removed on exit."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("stable-sam-upload", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="stable-sam-serve-") as folder:
        path = os.path.join(folder, "upload")
        with open(path, "wb") as f:
            f.write(data)
        yield path


def decode_image(data: bytes, max_pixels: int = MAX_UPLOAD_PIXELS) -> np.ndarray:
    """RGB uint8 HxWx3 of an encoded image, upright per its EXIF orientation (see image_files
    for the formats read)."""
    from ..data.image_files import ImageReadError, read_image_header, read_rgb

    if not data:
        raise UploadError("the upload is empty: choose an image file")
    with _memory_file(data) as path:
        try:
            height, width = read_image_header(path)
            if width * height > max_pixels:
                raise UploadError(
                    f"the image is {width}x{height} = {width * height} pixels, over the "
                    f"server's limit of {max_pixels} pixels")
            return read_rgb(path)
        except ImageReadError as exc:
            # The reader names the file; here that is the memory file's path, not the user's.
            message = str(exc).replace(f"image file {path}", "the uploaded image")
            raise UploadError(message.replace(f" '{path}'", "").replace(path, "the upload")) from None
