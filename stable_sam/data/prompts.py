"""Prompts for SAM and the robust training strategy (RTS) sampler.

Conventions (all in the pixel frame of the mask the prompt was drawn from):
- A box is float32 (4,) xyxy with torchvision's `masks_to_boxes` convention: x0, y0 are the
  first and x1, y1 the last foreground column / row (inclusive), which is what SAM's box
  encoder was trained with. Box IoU treats the four numbers as continuous corners.
- A point is float32 (x, y) = (column, row) of a pixel; SAM adds 0.5 itself to reach the centre.
- `mask_input` is float32 (S, S) LOGITS in SAM's transformed frame, S = model image size / 4
  (256 for the released 1024 models); see `mask_to_low_res_logits`.

Randomness: every prompt gets its own generator from `prompt_rng(dataset, image, prompt, seed)`,
a SHA-256 of the key fed to numpy's SeedSequence. Python's hash() is salted per process and
would make results depend on the worker; the seed per prompt makes them independent of worker
count and call order.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import cv2
import numpy as np
from segment_anything.utils.transforms import ResizeLongestSide

PROMPT_KINDS = ("box", "noisy_box", "points1", "points3", "points5", "points10", "coarse_mask")
POINT_KINDS = {"points1": 1, "points3": 3, "points5": 5, "points10": 10}


@dataclasses.dataclass
class Prompt:
    """One SAM prompt: a box, positive points or a coarse mask (exactly what `kind` says).

    Attributes:
      kind: one of PROMPT_KINDS.
      box: float32 (4,) xyxy, for "box" and "noisy_box"; else None.
      point_coords: float32 (N, 2) xy, for "pointsN" (N may be smaller than asked when the
        mask has fewer pixels); else None.
      point_labels: int64 (N,), 1 = foreground; else None.
      mask_input: float32 (S, S) logits in SAM's low-res transformed frame, for "coarse_mask".
    """

    kind: str
    box: np.ndarray | None = None
    point_coords: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    mask_input: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in PROMPT_KINDS:
            raise ValueError(f"kind must be one of {PROMPT_KINDS}, is {self.kind!r}")
        if self.box is not None:
            self.box = np.asarray(self.box, np.float32).reshape(4)
        if self.point_coords is not None:
            self.point_coords = np.asarray(self.point_coords, np.float32).reshape(-1, 2)
            labels = (np.ones(len(self.point_coords)) if self.point_labels is None
                      else self.point_labels)
            self.point_labels = np.asarray(labels, np.int64).reshape(-1)
            if len(self.point_labels) != len(self.point_coords):
                raise ValueError(f"point_labels has {len(self.point_labels)} entries for "
                                 f"{len(self.point_coords)} point_coords")
        if self.mask_input is not None:
            self.mask_input = np.asarray(self.mask_input, np.float32)
            if self.mask_input.ndim != 2 or self.mask_input.shape[0] != self.mask_input.shape[1]:
                raise ValueError(f"mask_input must be a square (S, S) array of logits, is "
                                 f"{self.mask_input.shape}")

    def to_json(self) -> dict:
        """A JSON-serialisable dict (lists of numbers; mask_input as nested lists)."""
        out: dict = {"kind": self.kind}
        for field in ("box", "point_coords", "point_labels", "mask_input"):
            value = getattr(self, field)
            if value is not None:
                out[field] = value.tolist()
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "Prompt":
        unknown = set(obj) - {"kind", "box", "point_coords", "point_labels", "mask_input"}
        if unknown or "kind" not in obj:
            raise ValueError(f"not a Prompt: keys {sorted(obj)}")
        return cls(**{k: (np.asarray(v) if k != "kind" else v) for k, v in obj.items()})


def prompt_rng(dataset: str, image_index: int, prompt_index: int, seed: int = 0,
               *, stream: str = "") -> np.random.Generator:
    """The generator for one prompt, a pure function of its key.

    `stream` separates independent uses of the same (dataset, image, prompt) key, e.g. the
    prompt kind and the target object within a COCO image ("noisy_box/3").
    """
    key = f"{dataset}\x1f{int(image_index)}\x1f{int(prompt_index)}\x1f{int(seed)}\x1f{stream}"
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return np.random.default_rng(np.random.SeedSequence(
        [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]))


def _nonempty(mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"{what} must be a 2-D HxW mask, has shape {mask.shape}")
    if not mask.any():
        raise ValueError(f"{what} is empty: a box needs at least one foreground pixel")
    return mask


def gt_box(mask: np.ndarray) -> np.ndarray:
    """Tight float32 (4,) xyxy box of a non-empty bool HxW mask (inclusive last pixel)."""
    mask = _nonempty(mask, "mask")
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two xyxy boxes as continuous rectangles; two identical boxes give 1 even when
    they have zero area (a one-pixel mask's box)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.array_equal(a, b):
        return 1.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _clip_box(box: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    height, width = image_size
    x0, x1 = np.clip(sorted((box[0], box[2])), 0, width - 1)
    y0, y1 = np.clip(sorted((box[1], box[3])), 0, height - 1)
    return np.array([x0, y0, x1, y1], np.float32)


def _shrunk_box(box: np.ndarray, target_iou: float) -> np.ndarray:
    # A box shrunk about its centre by f per side lies inside the GT box and has IoU f^2.
    factor = np.sqrt(target_iou)
    centre = (box[:2] + box[2:]) / 2
    half = (box[2:] - box[:2]) / 2 * factor
    return np.concatenate([centre - half, centre + half]).astype(np.float32)


def noisy_box(mask_or_box: np.ndarray, rng: np.random.Generator, noise_scale: float = 0.4,
              iou_range: tuple[float, float] = (0.5, 1.0),
              image_size: tuple[int, int] | None = None, max_tries: int = 1000) -> np.ndarray:
    """A jittered copy of the GT box whose IoU with it lies in [iou_range[0], iou_range[1]).

    In (cx, cy, w, h): the centre moves by U(-1, 1) * s * (w/2, h/2), w and h change by
    U(-1, 1) * s * (w, h); the box is clipped to the image and redrawn until its IoU is in
    range (an upper bound of 1.0 is inclusive). A zero-area GT box (a mask one pixel wide or
    tall) is returned unchanged. After `max_tries` draws (the range may be out
    of reach, e.g. IoU >= 0.9 with a tiny noise scale), the deterministic fallback is the GT box
    shrunk about its centre to the middle of the range, which is always inside the image.

    Arguments:
      mask_or_box: bool HxW mask (its `gt_box` is used) or a float (4,) xyxy box.
      image_size: (H, W) to clip to; required for a box, defaults to the mask's shape.
    """
    low, high = (float(v) for v in iou_range)
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"iou_range must satisfy 0 <= low < high <= 1, is {iou_range}")
    if noise_scale < 0:
        raise ValueError(f"noise_scale must be >= 0, is {noise_scale}")
    arr = np.asarray(mask_or_box)
    if arr.ndim == 2:
        box = gt_box(arr)
        image_size = arr.shape if image_size is None else image_size
    elif arr.shape == (4,):
        box = arr.astype(np.float32)
        if image_size is None:
            raise ValueError("image_size (H, W) is required when noisy_box is given a box")
    else:
        raise ValueError(f"mask_or_box must be an HxW mask or a (4,) box, has shape {arr.shape}")

    def in_range(iou: float) -> bool:
        return low <= iou < high or (high == 1.0 and iou == 1.0)

    width, height = box[2] - box[0], box[3] - box[1]
    if width <= 0 or height <= 0:
        # A one-row / one-column mask has a zero-area box: no IoU is defined against it, and
        # the only box "in range" is the box itself.
        return _clip_box(box, image_size)
    centre = (box[:2] + box[2:]) / 2
    for _ in range(max_tries):
        u = rng.uniform(-1.0, 1.0, size=4)
        cx = centre[0] + u[0] * noise_scale * width / 2
        cy = centre[1] + u[1] * noise_scale * height / 2
        w = max(0.0, width + u[2] * noise_scale * width)
        h = max(0.0, height + u[3] * noise_scale * height)
        candidate = _clip_box(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]),
                              image_size)
        if in_range(box_iou(candidate, box)):
            return candidate
    return _clip_box(_shrunk_box(box, min(1.0, (low + high) / 2)), image_size)


def positive_points(mask: np.ndarray, n: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """min(n, #foreground) distinct foreground pixels as (float32 (k, 2) xy, int64 (k,) ones).

    An empty mask gives k = 0 (shapes (0, 2) and (0,)): SAM cannot take zero points, so callers
    must skip such a target, but sampling itself never fails.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D HxW mask, has shape {mask.shape}")
    if n < 1:
        raise ValueError(f"n must be >= 1, is {n}")
    flat = np.flatnonzero(mask)
    chosen = rng.choice(flat, size=min(n, flat.size), replace=False) if flat.size else flat
    rows, cols = np.divmod(chosen, mask.shape[1])
    coords = np.stack([cols, rows], axis=1).astype(np.float32).reshape(-1, 2)
    return coords, np.ones(len(coords), np.int64)


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` (chessboard distance) of the mask's boundary, on either side."""
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    m = np.asarray(mask, np.uint8)
    return (cv2.dilate(m, kernel) != cv2.erode(m, kernel))


def coarse_mask(mask: np.ndarray, rng: np.random.Generator, noise_std: float = 1.0,
                band_ratio: float = 0.02) -> np.ndarray:
    """A degraded bool copy of `mask`: Gaussian noise on the boundary band, thresholded at 0.5.

    As HQ-SAM's noisy-mask prompt, only pixels within a band of width
    max(1, round(band_ratio * image diagonal)) of the boundary can change; with noise_std 1
    about 31% of band pixels flip.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D HxW mask, has shape {mask.shape}")
    width = max(1, int(round(band_ratio * float(np.hypot(*mask.shape)))))
    band = boundary_band(mask, width)
    noise = rng.normal(0.0, noise_std, size=mask.shape)
    return np.where(band, mask + noise > 0.5, mask)


def mask_to_low_res_logits(mask: np.ndarray, model_image_size: int = 1024,
                           logit_limit: float = 8.0) -> np.ndarray:
    """Full-resolution bool HxW mask -> float32 (S, S) logits for SAM's `mask_input`.

    Mirrors what SAM does to the image: resize so the long side is `model_image_size`
    (ResizeLongestSide's rounding), pad bottom/right with background to a square, then
    area-downsample by 4 to S = model_image_size // 4 (the size of SAM's low-res masks and of
    the prompt encoder's mask input). The foreground fraction p of each low-res pixel becomes
    the logit log(p / (1 - p)) clipped to [-logit_limit, logit_limit] (p = 0 or 1 would be
    infinite); SAM's own low-res outputs are logits of a similar range.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D HxW mask, has shape {mask.shape}")
    if model_image_size % 4 or model_image_size < 4:
        raise ValueError(f"model_image_size must be a positive multiple of 4, is "
                         f"{model_image_size}")
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(*mask.shape, model_image_size)
    resized = cv2.resize(mask.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    padded = np.zeros((model_image_size, model_image_size), np.float32)
    padded[:new_h, :new_w] = resized
    side = model_image_size // 4
    prob = cv2.resize(padded, (side, side), interpolation=cv2.INTER_AREA)
    eps = 1.0 / (1.0 + np.exp(logit_limit))
    prob = np.clip(prob, eps, 1.0 - eps)
    return np.clip(np.log(prob / (1.0 - prob)), -logit_limit, logit_limit).astype(np.float32)


def make_prompt(kind: str, mask: np.ndarray, rng: np.random.Generator,
                image_size: tuple[int, int] | None = None, noise_scale: float = 0.4,
                iou_range: tuple[float, float] = (0.5, 1.0),
                model_image_size: int = 1024) -> Prompt:
    """One prompt of `kind` for the non-empty bool HxW `mask` (in the frame of `image_size`,
    which defaults to the mask's shape)."""
    mask = _nonempty(mask, "mask")
    image_size = tuple(mask.shape) if image_size is None else tuple(image_size)
    if kind == "box":
        return Prompt(kind, box=gt_box(mask))
    if kind == "noisy_box":
        return Prompt(kind, box=noisy_box(mask, rng, noise_scale, iou_range, image_size))
    if kind in POINT_KINDS:
        coords, labels = positive_points(mask, POINT_KINDS[kind], rng)
        return Prompt(kind, point_coords=coords, point_labels=labels)
    if kind == "coarse_mask":
        return Prompt(kind, mask_input=mask_to_low_res_logits(coarse_mask(mask, rng),
                                                              model_image_size))
    raise ValueError(f"kind must be one of {PROMPT_KINDS}, is {kind!r}")


# Training "without RTS" (Table 5 and 6): the high-quality prompts SAM and HQ-SAM train with,
# GT boxes, 10 points and coarse masks, and no synthetic occlusion. RTSConfig fields.
WITHOUT_RTS: dict = {"weights": {"box": 1.0, "points10": 1.0, "coarse_mask": 1.0},
                     "occlusion_probability": 0.0}


@dataclasses.dataclass
class RTSConfig:
    """Robust training strategy: which prompt kinds to draw and how often.

    A kind with weight 0 is switched off. The default mixes every kind the paper's RTS lists
    (GT box, noisy box at scale 0.4 with IoU >= 0.5, 1/3/5/10 points, coarse masks) with equal
    weights: the paper gives none. `RTSConfig.hq_sam()` is training without RTS (WITHOUT_RTS).
    """

    weights: dict[str, float] = dataclasses.field(
        default_factory=lambda: {kind: 1.0 for kind in PROMPT_KINDS})
    noise_scale: float = 0.4  # noisy-box noise scale s (paper: 0.4)
    noisy_box_iou_range: tuple[float, float] = (0.5, 1.0)  # paper §9: IoU >= 0.5 with the GT box
    occlusion_probability: float = 0.0  # chance a trainer pastes another object (RTS: > 0)
    model_image_size: int = 1024  # SAM's input size; sets the coarse-mask logits' size

    def __post_init__(self):
        unknown = set(self.weights) - set(PROMPT_KINDS)
        if unknown:
            raise ValueError(f"RTSConfig.weights has unknown kinds {sorted(unknown)}; "
                             f"known: {PROMPT_KINDS}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"RTSConfig.weights must be >= 0 with a positive sum, are "
                             f"{self.weights}")
        if not 0.0 <= self.occlusion_probability <= 1.0:
            raise ValueError(f"occlusion_probability must be in [0, 1], is "
                             f"{self.occlusion_probability}")

    @classmethod
    def hq_sam(cls, **overrides) -> "RTSConfig":
        """Training without RTS: WITHOUT_RTS's prompts, over `overrides` of other fields."""
        fields = {**overrides, **WITHOUT_RTS}
        fields["weights"] = dict(WITHOUT_RTS["weights"])
        return cls(**fields)

    def enabled_kinds(self) -> list[str]:
        return [k for k in PROMPT_KINDS if self.weights.get(k, 0.0) > 0]


def sample_training_prompt(mask: np.ndarray, rng: np.random.Generator, config: RTSConfig,
                           image_size: Sequence[int] | None = None) -> Prompt:
    """Draws a prompt kind by `config.weights`, then a prompt of that kind for `mask`.

    Arguments:
      mask: bool HxW target in the training frame; it must be non-empty (a trainer skips a
        target that cropping removed: a prompt for nothing is not a training signal).
      image_size: (H, W) of that frame for clipping noisy boxes; defaults to mask.shape.
    Returns a Prompt in the same frame; `mask_input` (coarse masks) is already in SAM's
    low-res transformed frame for `config.model_image_size`.
    """
    kinds = config.enabled_kinds()
    weights = np.array([config.weights[k] for k in kinds], np.float64)
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    return make_prompt(kind, mask, rng, image_size, config.noise_scale,
                       config.noisy_box_iou_range, config.model_image_size)
