"""Geometric transforms: HQ-SAM's large-scale jitter and SAM's resize-longest-side frame."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from stable_sam.data.prompts import Prompt


@dataclasses.dataclass
class Jittered:
    """A large-scale-jittered sample on an out_size x out_size canvas.

    Attributes:
      image: uint8 (out, out, 3); mask: bool (out, out).
      valid: bool (out, out), True on pixels that came from the image (the rest is padding);
        the valid region is the top-left valid_size[0] x valid_size[1] rectangle.
      valid_size: (h, w) of that region.
      scale: the resize factor applied to the input; crop_offset: (top, left) of the crop in
        the resized image (0, 0 when the resized image fit).
    """

    image: np.ndarray
    mask: np.ndarray
    valid: np.ndarray
    valid_size: tuple[int, int]
    scale: float
    crop_offset: tuple[int, int]


def _resize(image: np.ndarray, mask: np.ndarray, new_h: int, new_w: int):
    shrink = new_h < image.shape[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out_image = cv2.resize(image, (new_w, new_h), interpolation=interp)
    # Resize the mask as a float and threshold at 0.5 so thin parts survive a moderate shrink.
    out_mask = cv2.resize(mask.astype(np.float32), (new_w, new_h), interpolation=interp) >= 0.5
    return out_image, out_mask


def large_scale_jitter(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                       out_size: int = 1024, scale_range: tuple[float, float] = (0.1, 2.0)
                       ) -> Jittered:
    """HQ-SAM-style large-scale jitter: random scale, random crop, pad to out_size x out_size.

    The image is resized so its long side is s * out_size, s ~ U(scale_range); a side longer
    than out_size is cropped at a uniform offset; the canvas is padded bottom/right with 0 (as
    SAM pads its input), so the valid region is the top-left rectangle. The crop may cut the
    target out entirely: check `mask.any()` before sampling a prompt.

    Arguments:
      image: uint8 HxWx3; mask: bool HxW; rng: the sample's generator.
    """
    image, mask = np.asarray(image), np.asarray(mask, bool)
    if image.ndim != 3 or image.shape[:2] != mask.shape:
        raise ValueError(f"image must be HxWx3 and mask HxW of the same size, are {image.shape} "
                         f"and {mask.shape}")
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, is {scale_range}")
    s = rng.uniform(low, high)
    scale = s * out_size / max(image.shape[:2])
    new_h = max(1, int(round(image.shape[0] * scale)))
    new_w = max(1, int(round(image.shape[1] * scale)))
    resized_image, resized_mask = _resize(image, mask, new_h, new_w)
    top = int(rng.integers(0, max(0, new_h - out_size) + 1))
    left = int(rng.integers(0, max(0, new_w - out_size) + 1))
    crop = (slice(top, top + out_size), slice(left, left + out_size))
    cropped_image, cropped_mask = resized_image[crop], resized_mask[crop]
    h, w = cropped_mask.shape
    out_image = np.zeros((out_size, out_size, 3), np.uint8)
    out_mask = np.zeros((out_size, out_size), bool)
    valid = np.zeros((out_size, out_size), bool)
    out_image[:h, :w], out_mask[:h, :w], valid[:h, :w] = cropped_image, cropped_mask, True
    return Jittered(out_image, out_mask, valid, (h, w), float(scale), (top, left))


def resize_longest_side(array: np.ndarray, target_length: int) -> np.ndarray:
    """Resizes an image (HxWxC uint8) or mask (HxW bool) so the long side is target_length,
    with SamPredictor's rounding; masks are resized as floats and thresholded at 0.5."""
    array = np.asarray(array)
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(*array.shape[:2], target_length)
    if array.dtype == bool:
        resized = cv2.resize(array.astype(np.float32), (new_w, new_h),
                             interpolation=cv2.INTER_LINEAR)
        return resized >= 0.5
    # SamPredictor resizes with PIL's bilinear; the difference is below JPEG noise.
    return cv2.resize(array, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def pad_bottom_right(array: np.ndarray, size: int, value=0) -> np.ndarray:
    """Pads the first two axes to size x size at the bottom/right, as Sam.preprocess does."""
    array = np.asarray(array)
    h, w = array.shape[:2]
    if h > size or w > size:
        raise ValueError(f"array of size {h}x{w} does not fit in {size}x{size}")
    out = np.full((size, size) + array.shape[2:], value, array.dtype)
    out[:h, :w] = array
    return out


def image_to_sam_input(image: np.ndarray, target_length: int) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float 3xhxw tensor resized like SamPredictor.set_image; pass it
    (batched) through `sam.preprocess`, which normalises and pads to target_length."""
    resized = resize_longest_side(image, target_length)
    return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()


def transform_prompt(prompt: Prompt, original_size: tuple[int, int],
                     target_length: int) -> Prompt:
    """Maps a prompt's box and points from the original image frame into SAM's input frame
    (long side = target_length). `mask_input` is already in that frame and is kept."""
    transform = ResizeLongestSide(target_length)
    box = (None if prompt.box is None
           else transform.apply_boxes(prompt.box[None].astype(np.float64), original_size)[0])
    coords = (None if prompt.point_coords is None
              else transform.apply_coords(prompt.point_coords.astype(np.float64),
                                          original_size))
    return Prompt(prompt.kind, box=box, point_coords=coords, point_labels=prompt.point_labels,
                  mask_input=prompt.mask_input)
