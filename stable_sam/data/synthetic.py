"""Deterministic synthetic segmentation data: textured backgrounds with coloured shapes.

Used by the tests, the trainer's tests and the README's CPU demo, where no real dataset can be
downloaded. The images are generated from `seed` alone, so two runs write identical files.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from stable_sam.data._io import write_image_atomic, write_json_atomic

SHAPE_CATEGORIES = {"ellipse": 1, "polygon": 2, "thin": 3}


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    # Low-frequency colour noise plus stripes: enough texture that a mask is not a colour threshold.
    coarse = rng.uniform(40, 200, size=(max(2, height // 32), max(2, width // 32), 3))
    image = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
    stripes = 20.0 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    image += stripes[..., None] + rng.normal(0, 6, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def fill_random_polygon(canvas: np.ndarray, rng: np.random.Generator, centre, radius_range,
                        scale: float) -> None:
    """Fills a star-shaped polygon of 3-7 vertices around `centre` with 1, each vertex at a random
    angle and at radius uniform(*radius_range) * scale (the generated scenes draw theirs with it
    too; its draws from `rng` fix both generators' outputs, so keep their order)."""
    count = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    radii = rng.uniform(*radius_range, count) * scale
    cx, cy = centre
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    cv2.fillPoly(canvas, [pts.round().astype(np.int32)], 1)


def _shape_mask(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    canvas = np.zeros((height, width), np.uint8)
    short = min(height, width)
    cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
    if kind == "ellipse":
        axes = (int(rng.uniform(0.1, 0.3) * short), int(rng.uniform(0.1, 0.3) * short))
        cv2.ellipse(canvas, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == "polygon":
        fill_random_polygon(canvas, rng, (cx, cy), (0.1, 0.3), short)
    elif kind == "thin":
        # A thick-ish polyline: thin structures are what boundary IoU is sensitive to.
        count = int(rng.integers(2, 5))
        pts = np.stack([rng.uniform(0.15, 0.85, count) * width,
                        rng.uniform(0.15, 0.85, count) * height], axis=1)
        cv2.polylines(canvas, [pts.round().astype(np.int32)], False, 1,
                      thickness=int(rng.integers(3, 7)))
    else:
        raise ValueError(f"kind must be one of {sorted(SHAPE_CATEGORIES)}, is {kind!r}")
    return canvas.astype(bool)


def _draw_scene(rng: np.random.Generator, height: int, width: int):
    """Returns (image, visible masks, kinds); later shapes are drawn over earlier ones."""
    image = _background(rng, height, width)
    kinds, masks = [], []
    for _ in range(int(rng.integers(1, 4))):
        kind = str(rng.choice(list(SHAPE_CATEGORIES)))
        shape = _shape_mask(rng, kind, height, width)
        if shape.sum() < 16:  # a degenerate draw; a target must be visible
            continue
        colour = rng.integers(0, 256, size=3)
        shade = rng.uniform(0.8, 1.2, size=(height, width, 1))
        image[shape] = np.clip(colour * shade[shape], 0, 255).astype(np.uint8)
        masks = [m & ~shape for m in masks] + [shape]
        kinds.append(kind)
    if not masks:
        shape = _shape_mask(rng, "ellipse", height, width)
        image[shape] = 255 - image[shape]
        masks, kinds = [shape], ["ellipse"]
    return image, masks, kinds


def _polygons(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def make_synthetic_dataset(root: str | os.PathLike, num_images: int = 8,
                           image_size: tuple[int, int] = (192, 256), seed: int = 0,
                           layout: str = "hqseg") -> Path:
    """Writes a small generated dataset under `root` and returns `root`.

    Arguments:
      root: output folder (created).
      num_images: number of images.
      image_size: (H, W) of every image.
      seed: the only source of randomness; the same seed writes the same files.
      layout: "hqseg" writes `root/im/NAME.jpg` + `root/gt/NAME.png` (0/255, one target per
        image: the last-drawn, fully visible shape); "coco" writes `root/images/NAME.jpg` +
        `root/annotations.json` with one annotation per visible shape, alternating polygon and
        (compressed) RLE segmentations so that both parsers are exercised.
    """
    if layout not in ("hqseg", "coco"):
        raise ValueError(f"layout must be 'hqseg' or 'coco', is {layout!r}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, is {num_images}")
    height, width = (int(s) for s in image_size)
    if height < 16 or width < 16:
        raise ValueError(f"image_size must be at least (16, 16), is {image_size}")
    root = Path(root)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, index])
        image, masks, kinds = _draw_scene(rng, height, width)
        name = f"synthetic_{index:04d}"
        if layout == "hqseg":
            write_image_atomic(root / "im" / f"{name}.jpg", image)
            write_image_atomic(root / "gt" / f"{name}.png", masks[-1].astype(np.uint8) * 255)
            continue
        write_image_atomic(root / "images" / f"{name}.jpg", image)
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"{name}.jpg", "height": height,
                       "width": width})
        for mask, kind in zip(masks, kinds):
            ann_id = len(annotations) + 1
            polygons = _polygons(mask)
            segmentation = polygons if (ann_id % 2 == 1 and polygons) else _rle(mask)
            encoded = (mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
                       if isinstance(segmentation, list) else
                       {"size": segmentation["size"], "counts": segmentation["counts"].encode()})
            area = float(mask_utils.area(encoded))
            if area < 1:
                continue
            x, y, w, h = (float(v) for v in mask_utils.toBbox(encoded))
            annotations.append({"id": ann_id, "image_id": image_id,
                                "category_id": SHAPE_CATEGORIES[kind],
                                "segmentation": segmentation, "area": area,
                                "bbox": [x, y, w, h], "iscrowd": 0})
    if layout == "coco":
        categories = [{"id": cid, "name": name} for name, cid in SHAPE_CATEGORIES.items()]
        write_json_atomic(root / "annotations.json",
                          {"images": images, "annotations": annotations,
                           "categories": categories})
    return root
