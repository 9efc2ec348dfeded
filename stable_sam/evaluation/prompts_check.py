"""A prompts file checked against the dataset it is used with, before any prediction.

A frozen prompts file decides the numbers an evaluation reports, so every value in it is
checked: the image names and count, the target indices (and COCO annotation ids), the kinds,
the number of prompts, finite boxes and points inside the image, point labels 0/1, coarse-mask
logits of the model's size, and the masks themselves: `fingerprinted` stores a hash of each
target mask when the prompts are frozen, and `check_prompts` compares it with the dataset's
masks, so prompts frozen for other masks under the same image names are refused.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["PromptsFileError", "mask_fingerprint", "fingerprinted", "check_prompts"]


class PromptsFileError(ValueError):
    """A prompts file that does not fit the dataset; the message says where and why."""


def mask_fingerprint(mask: np.ndarray) -> str:
    mask = np.asarray(mask, bool)
    digest = hashlib.sha256(f"{mask.shape[0]}x{mask.shape[1]}:".encode())
    digest.update(np.packbits(mask, axis=None).tobytes())
    return digest.hexdigest()


class _Recorder:
    """The dataset as freeze_prompts reads it, remembering each item's mask fingerprints, so
    freezing reads every image once."""

    def __init__(self, dataset):
        self.dataset, self.name, self.fingerprints = dataset, dataset.name, {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        from .prompts import sample_targets

        item = self.dataset[index]
        self.fingerprints[index] = [mask_fingerprint(m) for m in sample_targets(item)]
        return item


def fingerprinted(freeze, dataset, *args, **kwargs) -> dict:
    """`freeze(dataset, *args, **kwargs)` (freeze_prompts) with each target's mask fingerprint
    stored beside its prompts."""
    recorder = _Recorder(dataset)
    frozen = freeze(recorder, *args, **kwargs)
    for image in frozen["images"]:
        for target in image["targets"]:
            target["mask_sha256"] = recorder.fingerprints[image["index"]][target["target"]]
    return frozen


def _targets_of(dataset, index: int) -> tuple[str, list[np.ndarray], list[int] | None]:
    """(name, target masks, COCO annotation ids) of one item, reading only the masks where the
    dataset allows it."""
    if hasattr(dataset, "samples"):  # HQSegDataset: the mask file alone
        from stable_sam.data.hqseg import FOREGROUND_THRESHOLD
        from stable_sam.data.image_files import read_gray

        image_path, mask_path = dataset.samples[index]
        return image_path.stem, [read_gray(mask_path) > FOREGROUND_THRESHOLD], None
    if hasattr(dataset, "coco"):  # CocoInstanceDataset: the annotations alone
        image_id = dataset.image_ids[index]
        ann_ids = dataset.ann_ids[image_id]
        masks = [dataset.coco.annToMask(a).astype(bool) for a in dataset.coco.loadAnns(ann_ids)]
        name = Path(dataset.coco.imgs[image_id]["file_name"]).stem
        return name, masks, list(ann_ids)
    from .prompts import sample_targets

    item = dataset[index]
    return item["name"], sample_targets(item), item.get("ann_ids")


def _finite_array(value, shape_tail: tuple, where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptsFileError(f"{where}: not an array of numbers") from None
    if array.ndim != len(shape_tail) or any(t is not None and s != t
                                            for s, t in zip(array.shape, shape_tail)):
        raise PromptsFileError(f"{where}: shape {array.shape}, expected {shape_tail}")
    if not np.isfinite(array).all():
        raise PromptsFileError(f"{where}: holds NaN or infinite values")
    return array


def _check_prompt(obj: Any, prompt_kind: str, height: int, width: int, mask_size: int,
                  where: str) -> None:
    if not isinstance(obj, dict) or obj.get("kind") != prompt_kind:
        found = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
        raise PromptsFileError(f"{where}: expected a {prompt_kind!r} prompt, found {found!r}")
    unknown = set(obj) - {"kind", "box", "point_coords", "point_labels", "mask_input"}
    if unknown:
        raise PromptsFileError(f"{where}: unknown entries {sorted(unknown)}")
    if prompt_kind in ("box", "noisy_box"):
        x0, y0, x1, y1 = _finite_array(obj.get("box"), (4,), f"{where} box")
        if not (0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height):
            raise PromptsFileError(f"{where}: box {[x0, y0, x1, y1]} is inverted or leaves the "
                                   f"{width}x{height} image")
    elif prompt_kind.startswith("points"):
        coords = _finite_array(obj.get("point_coords"), (None, 2), f"{where} point_coords")
        labels = _finite_array(obj.get("point_labels"), (len(coords),), f"{where} point_labels")
        if len(coords) == 0 or len(coords) > int(prompt_kind[len("points"):]):
            raise PromptsFileError(f"{where}: {len(coords)} points for {prompt_kind!r}")
        if not np.isin(labels, (0, 1)).all():
            raise PromptsFileError(f"{where}: point labels must be 0 or 1, are "
                                   f"{sorted(set(labels.tolist()))}")
        if not ((coords[:, 0] >= 0) & (coords[:, 0] <= width) & (coords[:, 1] >= 0)
                & (coords[:, 1] <= height)).all():
            raise PromptsFileError(f"{where}: a point leaves the {width}x{height} image")
    else:  # coarse_mask
        _finite_array(obj.get("mask_input"), (mask_size, mask_size), f"{where} mask_input")


def _check_dataset(frozen: Any, dataset, kinds: Sequence[str], model_image_size: int,
                   where: str) -> None:
    from .prompts import _kind_spec

    if not isinstance(frozen, dict) or not isinstance(frozen.get("images"), list):
        raise PromptsFileError(f"{where}: not a frozen prompt set (no list of images)")
    frozen_kinds = frozen.get("kinds")
    if not isinstance(frozen_kinds, list) or not frozen_kinds:
        raise PromptsFileError(f"{where}: no list of kinds")
    try:
        specs = {k: _kind_spec(k)[0] for k in frozen_kinds}
    except (ValueError, TypeError) as exc:
        raise PromptsFileError(f"{where}: {exc}") from None
    missing = [k for k in kinds if k not in specs]
    if missing:
        raise PromptsFileError(f"{where}: kinds {missing} were not frozen; the file holds "
                               f"{frozen_kinds} (freeze them into a new prompts file)")
    per_image = frozen.get("prompts_per_image")
    if not isinstance(per_image, int) or isinstance(per_image, bool) or per_image < 1:
        raise PromptsFileError(f"{where}: prompts_per_image is {per_image!r}")
    images = frozen["images"]
    if frozen.get("num_images") != len(dataset) or len(images) != len(dataset):
        raise PromptsFileError(f"{where}: covers {len(images)} images, the dataset has "
                               f"{len(dataset)}")
    mask_size = model_image_size // 4
    for index, entry in enumerate(images):
        name, masks, ann_ids = _targets_of(dataset, index)
        at = f"{where} image {index}"
        if not isinstance(entry, dict) or entry.get("index") != index \
                or entry.get("name") != name:
            found = entry.get("name") if isinstance(entry, dict) else entry
            raise PromptsFileError(f"{at}: is {found!r}, the dataset has {name!r} (prompts "
                                   "frozen for another dataset)")
        targets = entry.get("targets")
        if not isinstance(targets, list) or \
                [t.get("target") if isinstance(t, dict) else None for t in targets] \
                != list(range(len(masks))):
            raise PromptsFileError(f"{at} ({name}): its targets must be 0..{len(masks) - 1}, "
                                   "one entry each")
        for t, (target, mask) in enumerate(zip(targets, masks)):
            _check_target(target, mask, specs, per_image, mask_size,
                          None if ann_ids is None else ann_ids[t], f"{at} ({name}) target {t}")


def _check_target(target: dict, mask: np.ndarray, specs: dict, per_image: int, mask_size: int,
                  ann_id, where: str) -> None:
    if "mask_sha256" not in target:
        raise PromptsFileError(f"{where}: no mask fingerprint (the file was frozen by an older "
                               "version or by hand): freeze the prompts into a new file")
    if target["mask_sha256"] != mask_fingerprint(mask):
        raise PromptsFileError(f"{where}: the prompts were frozen for another mask than the "
                               "dataset's (same image name, different object)")
    if ann_id is not None and target.get("ann_id") != ann_id:
        raise PromptsFileError(f"{where}: annotation id {target.get('ann_id')!r}, the dataset "
                               f"has {ann_id}")
    prompts = target.get("prompts")
    if not isinstance(prompts, dict):
        raise PromptsFileError(f"{where}: no prompts mapping")
    expected = set(specs) if mask.any() else set()
    if set(prompts) != expected:
        raise PromptsFileError(f"{where}: holds kinds {sorted(prompts)}, expected "
                               f"{sorted(expected)}")
    height, width = mask.shape
    for kind, batch in prompts.items():
        count = 1 if kind == "box" else per_image
        if not isinstance(batch, list) or len(batch) != count:
            raise PromptsFileError(f"{where} {kind}: expected {count} prompt(s)")
        for p, obj in enumerate(batch):
            _check_prompt(obj, specs[kind], height, width, mask_size, f"{where} {kind}[{p}]")


def check_prompts(prompts: Any, datasets: Sequence[Any], kinds: Sequence[str] | None,
                  model_image_size: int, path: str) -> None:
    """Raises PromptsFileError unless `prompts` (a `load_prompts` mapping read from `path`)
    holds, for every dataset, prompts of every kind in `kinds` (None: the file's kinds) that
    were frozen for exactly that dataset's images and masks."""
    if not isinstance(prompts, dict):
        raise PromptsFileError(f"prompts file {path}: 'datasets' is not a mapping")
    missing = [d.name for d in datasets if d.name not in prompts]
    if missing:
        raise PromptsFileError(f"prompts file {path} has no prompts for {missing} (it holds "
                               f"{sorted(prompts)}); pass a new file name to freeze them")
    for dataset in datasets:
        frozen = prompts[dataset.name]
        where = f"prompts file {path}, dataset {dataset.name!r}"
        if not isinstance(frozen, dict):
            raise PromptsFileError(f"{where}: not a frozen prompt set")
        chosen = kinds if kinds is not None else (frozen.get("kinds") or [])
        _check_dataset(frozen, dataset, list(chosen), model_image_size, where)
