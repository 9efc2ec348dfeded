"""HQ-SAM's image/mask folder layout (HQSeg-44K and its four validation sets).

An image `IMAGE_DIR/NAME.jpg` pairs with the mask `MASK_DIR/NAME.png`; foreground is gt > 128,
as in HQ-SAM's evaluation. Both may live in one folder (cascade_psp's DUTS-TR, ECSSD, ...).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from stable_sam.data._io import read_gray, read_rgb

IMAGE_SUFFIX = ".jpg"
MASK_SUFFIX = ".png"
FOREGROUND_THRESHOLD = 128

# (name, image dir, mask dir) relative to HQ-SAM's `data/` root, as its train.py lists them.
HQSEG44K_TRAIN = (
    ("DIS5K-TR", "DIS5K/DIS-TR/im", "DIS5K/DIS-TR/gt"),
    ("ThinObject5k-TR", "thin_object_detection/ThinObject5K/images_train",
     "thin_object_detection/ThinObject5K/masks_train"),
    ("FSS", "cascade_psp/fss_all", "cascade_psp/fss_all"),
    ("DUTS-TR", "cascade_psp/DUTS-TR", "cascade_psp/DUTS-TR"),
    ("DUTS-TE", "cascade_psp/DUTS-TE", "cascade_psp/DUTS-TE"),
    ("ECSSD", "cascade_psp/ecssd", "cascade_psp/ecssd"),
    ("MSRA10K", "cascade_psp/MSRA_10K", "cascade_psp/MSRA_10K"),
)
HQSEG44K_VAL = (
    ("DIS5K-VD", "DIS5K/DIS-VD/im", "DIS5K/DIS-VD/gt"),
    ("ThinObject5k-TE", "thin_object_detection/ThinObject5K/images_test",
     "thin_object_detection/ThinObject5K/masks_test"),
    ("COIFT", "thin_object_detection/COIFT/images", "thin_object_detection/COIFT/masks"),
    ("HRSOD", "thin_object_detection/HRSOD/images", "thin_object_detection/HRSOD/masks_max255"),
)

RootsArg = str | os.PathLike | Sequence[tuple[str | os.PathLike, str | os.PathLike]]


def _normalise_roots(roots: RootsArg) -> list[tuple[Path, Path]]:
    if isinstance(roots, (str, os.PathLike)):
        root = Path(roots)
        return [(root / "im", root / "gt")]
    pairs = []
    for pair in roots:
        if isinstance(pair, (str, os.PathLike)) or len(pair) != 2:
            raise ValueError(
                f"roots must be a folder with im/ and gt/ or a list of (image_dir, mask_dir) "
                f"pairs, got the entry {pair!r}")
        pairs.append((Path(pair[0]), Path(pair[1])))
    if not pairs:
        raise ValueError("roots is an empty list; expected at least one (image_dir, mask_dir)")
    return pairs


class HQSegDataset:
    """Images and single-object masks in HQ-SAM's layout.

    Arguments:
      roots: a folder holding `im/` and `gt/`, or a list of (image_dir, mask_dir) pairs whose
        samples are concatenated in the given order (each pair sorted by file name).
      name: dataset name used in reports and to seed evaluation prompts; defaults to the first
        image folder's parent name.

    Items are dicts: image (uint8 HxWx3 RGB), mask (bool HxW, gt > 128), name (file stem),
    index (position in the dataset). A folder without images, an image without its mask, an
    unreadable file or a mask of another size raises an error naming the file.
    """

    def __init__(self, roots: RootsArg, name: str | None = None):
        self.pairs = _normalise_roots(roots)
        self.samples: list[tuple[Path, Path]] = []
        for image_dir, mask_dir in self.pairs:
            if not image_dir.is_dir():
                raise FileNotFoundError(f"image folder not found: {image_dir}")
            if not mask_dir.is_dir():
                raise FileNotFoundError(f"mask folder not found: {mask_dir}")
            images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() == IMAGE_SUFFIX)
            if not images:
                raise FileNotFoundError(f"no {IMAGE_SUFFIX} images in folder: {image_dir}")
            for image_path in images:
                mask_path = mask_dir / (image_path.stem + MASK_SUFFIX)
                if not mask_path.is_file():
                    raise FileNotFoundError(
                        f"image {image_path} has no mask: expected {mask_path}")
                self.samples.append((image_path, mask_path))
        self.name = name if name is not None else self.pairs[0][0].parent.name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        image_path, mask_path = self.samples[index]
        image = read_rgb(image_path)
        gt = read_gray(mask_path)
        if gt.shape != image.shape[:2]:
            raise ValueError(
                f"mask {mask_path} is {gt.shape[1]}x{gt.shape[0]} (WxH) but image {image_path} "
                f"is {image.shape[1]}x{image.shape[0]}")
        return {"image": image, "mask": gt > FOREGROUND_THRESHOLD, "name": image_path.stem,
                "index": index}


def hqseg44k_roots(data_root: str | os.PathLike, split: str,
                   names: Sequence[str] | None = None) -> list[tuple[str, Path, Path]]:
    """(name, image_dir, mask_dir) of HQSeg-44K's train or val sets under HQ-SAM's `data/`.

    `split` is "train" (DIS5K-TR, ThinObject5k-TR, FSS, DUTS-TR, DUTS-TE, ECSSD, MSRA10K) or
    "val" (DIS5K-VD, ThinObject5k-TE, COIFT, HRSOD); `names` picks a subset.
    """
    table = {"train": HQSEG44K_TRAIN, "val": HQSEG44K_VAL}
    if split not in table:
        raise ValueError(f"split must be 'train' or 'val', is {split!r}")
    known = [entry[0] for entry in table[split]]
    if names is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown {split} set(s) {unknown}; known: {known}")
    root = Path(data_root)
    return [(name, root / im, root / gt) for name, im, gt in table[split]
            if names is None or name in names]


def hqseg44k_datasets(data_root: str | os.PathLike, split: str,
                      names: Sequence[str] | None = None) -> list[HQSegDataset]:
    """One HQSegDataset per HQSeg-44K set (evaluation reports each val set separately)."""
    return [HQSegDataset([(im, gt)], name=name)
            for name, im, gt in hqseg44k_roots(data_root, split, names)]

