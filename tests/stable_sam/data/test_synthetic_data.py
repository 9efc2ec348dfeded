"""The generated datasets: deterministic, both layouts, readable by the dataset classes."""
import json

import numpy as np
import pytest

from stable_sam.data import CocoInstanceDataset, HQSegDataset, make_synthetic_dataset


def test_hqseg_layout_is_deterministic(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", num_images=3, image_size=(40, 56), seed=3)
    b = make_synthetic_dataset(tmp_path / "b", num_images=3, image_size=(40, 56), seed=3)
    c = make_synthetic_dataset(tmp_path / "c", num_images=3, image_size=(40, 56), seed=4)
    names = sorted(p.name for p in (a / "im").iterdir())
    assert names == [f"synthetic_{i:04d}.jpg" for i in range(3)]
    assert sorted(p.name for p in (a / "gt").iterdir()) == [n[:-4] + ".png" for n in names]
    for name in names:
        assert (a / "im" / name).read_bytes() == (b / "im" / name).read_bytes()
    assert any((a / "im" / n).read_bytes() != (c / "im" / n).read_bytes() for n in names)
    ds = HQSegDataset(a)
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["image"].shape == (40, 56, 3) and sample["mask"].any()


def test_coco_layout_has_polygons_and_rle(tmp_path):
    root = make_synthetic_dataset(tmp_path, num_images=4, image_size=(48, 64), layout="coco")
    ann = json.loads((root / "annotations.json").read_text())
    kinds = {type(a["segmentation"]).__name__ for a in ann["annotations"]}
    assert kinds == {"list", "dict"}
    assert len(ann["images"]) == 4
    ds = CocoInstanceDataset(root / "images", root / "annotations.json")
    total = sum(len(ds[i]["ann_ids"]) for i in range(len(ds)))
    assert total == len(ann["annotations"])
    sample = ds[0]
    assert sample["masks"].shape[1:] == (48, 64) and sample["masks"].dtype == bool


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        make_synthetic_dataset(tmp_path, layout="voc")
    with pytest.raises(ValueError, match="num_images"):
        make_synthetic_dataset(tmp_path, num_images=0)
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_dataset(tmp_path, image_size=(8, 8))


def test_no_partial_files_left(tmp_path):
    make_synthetic_dataset(tmp_path, num_images=2, image_size=(32, 32))
    leftovers = [p for p in tmp_path.rglob(".*")]
    assert leftovers == []
    assert np.all([p.stat().st_size > 0 for p in tmp_path.rglob("*.*")])
