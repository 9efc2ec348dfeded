"""COCO-format instance masks through pycocotools (polygon and RLE segmentations)."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from stable_sam.data._io import read_rgb


def load_coco(ann_file: str | os.PathLike) -> COCO:
    """pycocotools.COCO without its progress prints; a missing file names itself."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return COCO(str(ann_file))
        except Exception as exc:  # pycocotools raises bare AssertionErrors / JSON errors
            raise ValueError(f"could not parse COCO annotation file {ann_file}: {exc}") from exc


def image_path_inside(image_dir: Path, file_name, ann_file) -> Path:
    """IMAGE_DIR/file_name, refused when file_name is not a relative path that stays inside
    IMAGE_DIR (absolute, `..`, or a symlinked folder leading out)."""
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"{ann_file}: an image has file_name {file_name!r}, expected a path "
                         "relative to the image folder")
    relative = Path(file_name)
    inside = not relative.is_absolute() and ".." not in relative.parts
    if inside:
        try:
            (image_dir / relative).resolve().relative_to(image_dir.resolve())
        except ValueError:
            inside = False
    if not inside:
        raise ValueError(f"{ann_file}: file_name {file_name!r} leaves the image folder "
                         f"{image_dir}; it must be a relative path inside it")
    return image_dir / relative


class CocoInstanceDataset:
    """One item per image that has at least one usable instance.

    Arguments:
      image_dir: folder with the images named by each image's `file_name`.
      ann_file: COCO instances JSON.
      min_area: annotations whose `area` is below this are skipped (as are iscrowd ones, whose
        masks cover groups rather than one object).
      name: dataset name for reports and prompt seeds; defaults to the annotation file's stem.

    Items are dicts: image (uint8 HxWx3 RGB), masks (bool KxHxW), boxes (float32 Kx4, xyxy
    from COCO's `bbox`: x, y, x + w, y + h), ann_ids, category_ids (int64 K), image_id,
    name (file stem), index.
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike,
                 min_area: float = 0.0, name: str | None = None):
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        self.coco = load_coco(ann_file)
        self.min_area = float(min_area)
        self.name = name if name is not None else Path(ann_file).stem
        self.image_ids: list[int] = []
        self.ann_ids: dict[int, list[int]] = {}
        for image_id in sorted(self.coco.getImgIds()):
            anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id], iscrowd=False))
            kept = [a["id"] for a in anns if a.get("area", 0.0) >= self.min_area]
            if kept:
                self.image_ids.append(image_id)
                self.ann_ids[image_id] = kept
        if not self.image_ids:
            raise ValueError(f"{ann_file} has no non-crowd annotation with area >= {min_area}")
        # Every path is checked before any image is read: an annotation file must not make the
        # reader open files outside the image folder.
        self.image_paths = {i: image_path_inside(self.image_dir, self.coco.imgs[i].get("file_name"),
                                                 ann_file) for i in self.image_ids}

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = index % len(self)
        image_id = self.image_ids[index]
        info = self.coco.loadImgs([image_id])[0]
        path = self.image_paths[image_id]
        image = read_rgb(path)
        if image.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"image {path} is {image.shape[1]}x{image.shape[0]} (WxH) but its annotation "
                f"says {info['width']}x{info['height']}")
        anns = self.coco.loadAnns(self.ann_ids[image_id])
        masks = np.stack([self.coco.annToMask(a).astype(bool) for a in anns])
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in anns], np.float32)
        return {"image": image, "masks": masks, "boxes": boxes,
                "ann_ids": [int(a["id"]) for a in anns],
                "category_ids": np.array([a["category_id"] for a in anns], np.int64),
                "image_id": int(image_id), "name": Path(info["file_name"]).stem,
                "index": index}
