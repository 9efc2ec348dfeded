"""Generated scenes where a casual prompt is really ambiguous, for the small-scale reproduction.

Each scene has several objects that touch and overlap the target (so a loose box also holds
parts of its neighbours), rings with holes and thin bars (boundary-heavy shapes), nearly
flat objects on a textured background, small clutter, and objects
drawn over the target (occlusion). Every draw comes from `numpy.random.default_rng([seed, i])`,
so a split is fixed by its seed; the training and the held-out split use different seeds.

`make_scene` returns the visible mask of every object; `write_scenes` writes the HQSeg layout
(`im/NAME.jpg` + `gt/NAME.png`, one target per image) that the trainer and `stable-sam evaluate`
read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stable_sam.data._io import write_image_atomic
from stable_sam.data.synthetic import fill_random_polygon

TRAIN_SEED = 1000  # the training split
TEST_SEED = 2000  # the held-out split: a different seed, never used for training or tuning
VAL_SEED = 3000  # scenes on which the base SAM's recipe was chosen: neither split's seed
SHAPES = ("blob", "ring", "bar", "polygon")
MIN_TARGET_AREA = 400  # pixels of the target left visible after occlusion


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 uint8 RGB
    masks: list  # visible mask (H x W bool) of every object, in drawing order
    target: int  # index into masks of the object the HQSeg file names


def _texture(rng: np.random.Generator, height: int, width: int, base: np.ndarray,
             strength: float) -> np.ndarray:
    # Colour noise at a random scale plus oriented stripes: objects and background share the
    # kind of texture, so a mask is not a colour threshold.
    cells = int(rng.integers(4, 16))
    coarse = rng.normal(0, 1, size=(cells, cells, 3)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    image = base[None, None, :] + strength * (25 * field + 18 * stripes[..., None])
    return image


def _shape(rng: np.random.Generator, kind: str, centre, scale: float, height: int,
           width: int) -> np.ndarray:
    canvas = np.zeros((height, width), np.uint8)
    cx, cy = (int(round(c)) for c in centre)
    angle = float(rng.uniform(0, 180))
    if kind in ("blob", "ring"):
        axes = (max(4, int(scale * rng.uniform(0.6, 1.0))), max(4, int(scale * rng.uniform(0.4, 1.0))))
        cv2.ellipse(canvas, (cx, cy), axes, angle, 0, 360, 1, -1)
        if kind == "ring":  # a hole: the background shows through the middle
            inner = (max(1, int(axes[0] * rng.uniform(0.35, 0.6))),
                     max(1, int(axes[1] * rng.uniform(0.35, 0.6))))
            cv2.ellipse(canvas, (cx, cy), inner, angle, 0, 360, 0, -1)
    elif kind == "bar":
        count = int(rng.integers(2, 4))
        pts = np.array([cx, cy]) + rng.uniform(-1.0, 1.0, size=(count, 2)) * scale
        # at least 5 px thick: thin, yet wider than one cell of the 64x64 low-res mask
        cv2.polylines(canvas, [pts.round().astype(np.int32)], False, 1,
                      thickness=int(rng.integers(6, 12)))
    elif kind == "polygon":
        fill_random_polygon(canvas, rng, (cx, cy), (0.5, 1.1), scale)
    else:
        raise ValueError(f"kind must be one of {SHAPES}, is {kind!r}")
    return canvas.astype(bool)


def _near_boundary(rng: np.random.Generator, mask: np.ndarray) -> tuple[float, float]:
    # A point on the target's outline: a neighbour centred there is sure to touch or overlap it.
    edge = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    ys, xs = np.nonzero(edge if edge.any() else mask)
    k = int(rng.integers(len(xs)))
    return float(xs[k]), float(ys[k])


def _paint(image: np.ndarray, shape: np.ndarray, rng: np.random.Generator) -> None:
    height, width = shape.shape
    colour = rng.uniform(30, 225, size=3).astype(np.float32)
    # Objects are nearly flat against a textured background: where an object ends is visible,
    # so a tight prompt is enough; which object a loose prompt means is the ambiguity left.
    fill = _texture(rng, height, width, colour, float(rng.uniform(0.05, 0.2)))
    image[shape] = fill[shape]


def make_scene(seed: int, index: int, size: int = 256) -> Scene:
    """One scene, a function of (seed, index) only."""
    rng = np.random.default_rng([seed, index])
    height = width = int(size)
    image = _texture(rng, height, width, rng.uniform(60, 190, size=3).astype(np.float32), 1.0)
    masks: list = []

    def add(shape: np.ndarray) -> None:
        nonlocal masks
        _paint(image, shape, rng)
        masks = [m & ~shape for m in masks] + [shape]

    for _ in range(int(rng.integers(3, 8))):  # clutter: small objects anywhere, under the rest
        centre = rng.uniform(0.05, 0.95, size=2) * size
        add(_shape(rng, str(rng.choice(("blob", "polygon"))), centre, size * 0.04, height, width))
    target_shape = _shape(rng, str(rng.choice(SHAPES)), rng.uniform(0.35, 0.65, size=2) * size,
                          size * rng.uniform(0.15, 0.25), height, width)
    add(target_shape)
    target = len(masks) - 1
    for _ in range(int(rng.integers(2, 5))):  # neighbours touching / overlapping the target
        centre = _near_boundary(rng, target_shape)
        shape = _shape(rng, str(rng.choice(SHAPES)), centre, size * rng.uniform(0.10, 0.20),
                       height, width)
        if rng.uniform() < 0.5:  # behind the target: it touches without hiding it
            shape &= ~np.any(masks[target:], axis=0)
            if shape.sum() < 16:
                continue
            _paint(image, shape, rng)
            masks = [m & ~shape for m in masks[:target]] + [shape] + masks[target:]
            target += 1
        else:  # in front: the target is occluded where they overlap
            if (masks[target] & ~shape).sum() < MIN_TARGET_AREA:
                continue
            add(shape)
    image = np.clip(image + rng.normal(0, 4, size=image.shape), 0, 255).astype(np.uint8)
    return Scene(image=image, masks=masks, target=target)


def write_scenes(root: str | os.PathLike, num_scenes: int, seed: int, size: int = 256) -> Path:
    """Writes scenes 0..num_scenes-1 of `seed` in the HQSeg layout under `root`; returns root."""
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, is {num_scenes}")
    root = Path(root)
    for index in range(num_scenes):
        scene = make_scene(seed, index, size)
        name = f"scene_{seed}_{index:05d}"
        write_image_atomic(root / "im" / f"{name}.jpg", scene.image)
        write_image_atomic(root / "gt" / f"{name}.png",
                           scene.masks[scene.target].astype(np.uint8) * 255)
    return root
