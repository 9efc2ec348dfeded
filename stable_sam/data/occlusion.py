"""Synthetic occlusion for RTS (paper §4.4): another object is pasted in front of the target
(the target is the occludee) or behind it (the target is the occluder)."""
from __future__ import annotations

import cv2
import numpy as np


def _crop_to_object(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return image[window], mask[window]


def paste_occluder(image: np.ndarray, mask: np.ndarray, occluder_image: np.ndarray,
                   occluder_mask: np.ndarray, rng: np.random.Generator,
                   max_covered: float = 0.7, max_tries: int = 8
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Pastes the occluder object over the target and removes the covered target pixels.

    The occluder (its mask's bounding box, cut out of `occluder_image`) is rescaled so its long
    side is U(0.3, 0.8) of the target box's long side and centred at a uniform point of the
    target box. A placement that would hide more than `max_covered` of the target is redrawn
    at half the size; after `max_tries` the inputs are returned unchanged, so the target is
    never wiped out. Inputs are not modified.

    Arguments:
      image: uint8 HxWx3; mask: bool HxW target.
      occluder_image: uint8 hxwx3; occluder_mask: bool hxw (any size: another sample).
    Returns (image, mask): new arrays, the same shapes and dtypes as the inputs.
    """
    image, mask = np.asarray(image), np.asarray(mask, bool)
    occluder_image, occluder_mask = np.asarray(occluder_image), np.asarray(occluder_mask, bool)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in size")
    if occluder_image.shape[:2] != occluder_mask.shape:
        raise ValueError(f"occluder_image {occluder_image.shape} and occluder_mask "
                         f"{occluder_mask.shape} differ in size")
    if not 0.0 < max_covered < 1.0:
        raise ValueError(f"max_covered must be in (0, 1), is {max_covered}")
    out_image, out_mask = image.copy(), mask.copy()
    if not mask.any() or not occluder_mask.any():
        return out_image, out_mask
    patch_image, patch_mask = _crop_to_object(occluder_image, occluder_mask)
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    target_long = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    relative = rng.uniform(0.3, 0.8)
    for _ in range(max_tries):
        scale = relative * target_long / max(patch_mask.shape)
        scale = min(scale, height / patch_mask.shape[0], width / patch_mask.shape[1])
        ph = max(1, int(round(patch_mask.shape[0] * scale)))
        pw = max(1, int(round(patch_mask.shape[1] * scale)))
        resized_mask = cv2.resize(patch_mask.astype(np.uint8), (pw, ph),
                                  interpolation=cv2.INTER_NEAREST).astype(bool)
        cy = rng.uniform(rows[0], rows[-1] + 1)
        cx = rng.uniform(cols[0], cols[-1] + 1)
        top = int(np.clip(round(cy - ph / 2), 0, height - ph))
        left = int(np.clip(round(cx - pw / 2), 0, width - pw))
        placed = np.zeros_like(mask)
        placed[top:top + ph, left:left + pw] = resized_mask
        remaining = mask & ~placed
        if remaining.sum() >= (1.0 - max_covered) * mask.sum() and remaining.any():
            resized_image = cv2.resize(patch_image, (pw, ph), interpolation=cv2.INTER_LINEAR)
            region = out_image[top:top + ph, left:left + pw]
            region[resized_mask] = resized_image[resized_mask]
            return out_image, remaining
        relative /= 2
    return out_image, out_mask


def paste_behind(image: np.ndarray, mask: np.ndarray, other_image: np.ndarray,
                 other_mask: np.ndarray, rng: np.random.Generator, min_visible: float = 0.3,
                 max_tries: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Pastes the other object behind the target: the target stays whole and on top, so it is
    the occluder and its mask is unchanged.

    The other object is rescaled so its long side is U(0.5, 1.0) of the target box's long side
    and centred at a uniform point of the target box grown by half the pasted size, so it
    usually overlaps the target. A placement where less than `min_visible` of the pasted
    object shows is redrawn; after `max_tries` the inputs are returned unchanged. Inputs are
    not modified; arguments as `paste_occluder`.
    """
    image, mask = np.asarray(image), np.asarray(mask, bool)
    other_image, other_mask = np.asarray(other_image), np.asarray(other_mask, bool)
    if image.shape[:2] != mask.shape or other_image.shape[:2] != other_mask.shape:
        raise ValueError(f"image {image.shape} / mask {mask.shape} or other image "
                         f"{other_image.shape} / mask {other_mask.shape} differ in size")
    out_image = image.copy()
    if not mask.any() or not other_mask.any():
        return out_image, mask.copy()
    patch_image, patch_mask = _crop_to_object(other_image, other_mask)
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    target_long = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    for _ in range(max_tries):
        scale = rng.uniform(0.5, 1.0) * target_long / max(patch_mask.shape)
        scale = min(scale, height / patch_mask.shape[0], width / patch_mask.shape[1])
        ph = max(1, int(round(patch_mask.shape[0] * scale)))
        pw = max(1, int(round(patch_mask.shape[1] * scale)))
        resized_mask = cv2.resize(patch_mask.astype(np.uint8), (pw, ph),
                                  interpolation=cv2.INTER_NEAREST).astype(bool)
        cy = rng.uniform(rows[0] - ph / 2, rows[-1] + 1 + ph / 2)
        cx = rng.uniform(cols[0] - pw / 2, cols[-1] + 1 + pw / 2)
        top = int(np.clip(round(cy - ph / 2), 0, height - ph))
        left = int(np.clip(round(cx - pw / 2), 0, width - pw))
        visible = resized_mask & ~mask[top:top + ph, left:left + pw]
        if visible.sum() >= min_visible * max(1, resized_mask.sum()) and visible.any():
            resized_image = cv2.resize(patch_image, (pw, ph), interpolation=cv2.INTER_LINEAR)
            region = out_image[top:top + ph, left:left + pw]
            region[visible] = resized_image[visible]
            return out_image, mask.copy()
    return out_image, mask.copy()


def synthesize_occlusion(image: np.ndarray, mask: np.ndarray, other_image: np.ndarray,
                         other_mask: np.ndarray, rng: np.random.Generator,
                         occludee_probability: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """RTS's occlusion: with `occludee_probability` the other object is pasted over the target
    (`paste_occluder`), else behind it (`paste_behind`). The paper names both relations and no
    ratio, so the default is even. Returns (image, mask) as those functions do."""
    if not 0.0 <= occludee_probability <= 1.0:
        raise ValueError(f"occludee_probability must be in [0, 1], is {occludee_probability}")
    paste = paste_occluder if rng.uniform() < occludee_probability else paste_behind
    return paste(image, mask, other_image, other_mask, rng)
