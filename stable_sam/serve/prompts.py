"""Checks of the prompts the page sends (JSON numbers in image pixels), before any model work.

A prompt outside the image is refused, not clipped: the page draws what the user did, and a
silently moved box would segment something else than what is on screen.
"""
from __future__ import annotations

import math

import numpy as np

from ..prompting import Prompts

MAX_POINTS = 64  # far more clicks than anyone places by hand; bounds a request's work


class PromptError(ValueError):
    """A prompt the server refuses; the message is shown on the page as it is."""


def shown(value, width: int = 60) -> str:
    """repr(value) cut to `width` characters: a message quotes what was sent, not all of it."""
    try:
        text = repr(value)
    except RecursionError:
        return "a deeply nested value"
    return text if len(text) <= width else text[:width - 3] + "..."


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PromptError(f"{what} must be a finite number, got {shown(value)}")
    try:
        number = float(value)  # a JSON integer has any number of digits
    except OverflowError:
        raise PromptError(f"{what} must be a finite number, got a {len(str(abs(value)))}-digit "
                          "integer") from None
    if not math.isfinite(number):
        raise PromptError(f"{what} must be a finite number, got {shown(value)}")
    return number


def _inside(x: float, y: float, width: int, height: int) -> bool:
    # Continuous pixel coordinates: the far edges (x = W, y = H) are inside.
    return 0 <= x <= width and 0 <= y <= height


def validate_box(box, image_shape) -> np.ndarray:
    """[x0, y0, x1, y1] inside the image with x0 < x1 and y0 < y1, as float64 (4,)."""
    height, width = image_shape[:2]
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise PromptError(f"a box is [x0, y0, x1, y1], got {shown(box)}")
    x0, y0, x1, y1 = (_number(v, "a box coordinate") for v in box)
    if x1 <= x0 or y1 <= y0:
        raise PromptError(f"the box {x0:g} {y0:g} {x1:g} {y1:g} is empty: drag a box with an area")
    if not (_inside(x0, y0, width, height) and _inside(x1, y1, width, height)):
        raise PromptError(f"the box {x0:g} {y0:g} {x1:g} {y1:g} reaches outside the "
                          f"{width}x{height} image")
    return np.array([x0, y0, x1, y1], dtype=np.float64)


def validate_prompts(box, points, image_shape) -> Prompts:
    """A box (or None) and clicks [[x, y, label], ...] (label 1 positive, 0 negative)."""
    height, width = image_shape[:2]
    points = [] if points is None else points
    if not isinstance(points, (list, tuple)):
        raise PromptError(f"points must be a list of [x, y, label], got {shown(points)}")
    if box is None and not points:
        raise PromptError("give a prompt: drag a box or click on the image")
    if len(points) > MAX_POINTS:
        raise PromptError(f"{len(points)} clicks are more than the {MAX_POINTS} allowed")
    coords, labels = [], []
    for point in points:
        if not isinstance(point, (list, tuple)) or len(point) != 3:
            raise PromptError(f"a click is [x, y, label], got {shown(point)}")
        x, y = _number(point[0], "a click's x"), _number(point[1], "a click's y")
        if point[2] not in (0, 1) or isinstance(point[2], bool):
            raise PromptError("a click's label is 1 (positive) or 0 (negative), got "
                              f"{shown(point[2])}")
        if not _inside(x, y, width, height):
            raise PromptError(f"the click ({x:g}, {y:g}) lies outside the {width}x{height} image")
        coords.append((x, y))
        labels.append(int(point[2]))
    return Prompts(
        point_coords=np.array(coords, dtype=np.float64) if coords else None,
        point_labels=np.array(labels, dtype=np.int64) if labels else None,
        box=None if box is None else validate_box(box, image_shape),
    )
