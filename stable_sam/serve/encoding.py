"""What goes back to the page: masks as PNG data URLs, images as PNG bytes."""
from __future__ import annotations

import base64

import cv2
import numpy as np



def png_bytes(array: np.ndarray) -> bytes:
    """uint8 HxW (grey) or HxWx3 (RGB) as PNG bytes."""
    image = array[..., ::-1] if array.ndim == 3 else array
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise ValueError(f"could not encode a {array.shape} {array.dtype} array as PNG")
    return buffer.tobytes()


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def mask_png_data_url(mask: np.ndarray) -> str:
    """A bool HxW mask as a grey PNG (255 inside, 0 outside): the file the page downloads."""
    return _data_url(png_bytes(np.where(mask, 255, 0).astype(np.uint8)))


def frequency_png_data_url(masks: np.ndarray) -> str:
    """K bool HxW masks as one grey PNG: each pixel's share of the masks covering it, 255 = all."""
    share = masks.reshape(len(masks), *masks.shape[1:]).sum(0) / max(len(masks), 1)
    return _data_url(png_bytes(np.round(share * 255).astype(np.uint8)))

