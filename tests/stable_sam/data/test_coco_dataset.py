"""CocoInstanceDataset: polygons and RLE, iscrowd and min_area filtering, errors."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from stable_sam.data import CocoInstanceDataset
from stable_sam.data._io import write_image_atomic


@pytest.fixture
def coco_root(tmp_path):
    h, w = 24, 32
    write_image_atomic(tmp_path / "images" / "one.jpg", np.zeros((h, w, 3), np.uint8))
    write_image_atomic(tmp_path / "images" / "two.jpg", np.zeros((h, w, 3), np.uint8))
    rle_mask = np.zeros((h, w), np.uint8)
    rle_mask[2:9, 20:31] = 1
    rle_mask[5, 3] = 1  # a stray pixel: RLE keeps it, a box would not
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    uncompressed_mask = np.zeros((h, w), np.uint8)
    uncompressed_mask[10:20, 0:4] = 1
    counts, current, run = [], 0, 0
    for v in uncompressed_mask.flatten(order="F"):  # COCO's column-major run lengths
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 5, "iscrowd": 0, "area": 48.0,
         "bbox": [2, 2, 8, 6], "segmentation": [[2, 2, 10, 2, 10, 8, 2, 8]]},
        {"id": 2, "image_id": 1, "category_id": 6, "iscrowd": 0, "area": 78.0,
         "bbox": [20, 2, 11, 7],
         "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}},
        {"id": 3, "image_id": 1, "category_id": 5, "iscrowd": 1, "area": 40.0,
         "bbox": [0, 10, 4, 10], "segmentation": {"size": [h, w], "counts": counts}},
        {"id": 4, "image_id": 2, "category_id": 6, "iscrowd": 0, "area": 40.0,
         "bbox": [0, 10, 4, 10], "segmentation": {"size": [h, w], "counts": counts}},
        {"id": 5, "image_id": 2, "category_id": 5, "iscrowd": 0, "area": 3.0,
         "bbox": [0, 0, 1, 3], "segmentation": [[0, 0, 1, 0, 1, 3, 0, 3]]},
    ]
    images = [{"id": 1, "file_name": "one.jpg", "height": h, "width": w},
              {"id": 2, "file_name": "two.jpg", "height": h, "width": w},
              {"id": 3, "file_name": "no_annotations.jpg", "height": h, "width": w}]
    (tmp_path / "ann.json").write_text(json.dumps(
        {"images": images, "annotations": anns,
         "categories": [{"id": 5, "name": "a"}, {"id": 6, "name": "b"}]}))
    return tmp_path, rle_mask, uncompressed_mask


def test_polygons_and_rle_are_decoded(coco_root):
    root, rle_mask, uncompressed_mask = coco_root
    ds = CocoInstanceDataset(root / "images", root / "ann.json")
    assert len(ds) == 2 and ds.name == "ann"  # image 3 has no annotation
    first = ds[0]
    assert first["ann_ids"] == [1, 2]  # the iscrowd annotation 3 is skipped
    assert first["image_id"] == 1 and first["name"] == "one"
    np.testing.assert_array_equal(first["category_ids"], [5, 6])
    assert first["masks"].shape == (2, 24, 32) and first["masks"].dtype == bool
    polygon = first["masks"][0]
    assert polygon[3:8, 3:10].all() and not polygon[12:, :].any()
    np.testing.assert_array_equal(first["masks"][1], rle_mask.astype(bool))
    np.testing.assert_allclose(first["boxes"][1], [20, 2, 31, 9])
    second = ds[1]
    np.testing.assert_array_equal(second["masks"][0], uncompressed_mask.astype(bool))


def test_min_area_skips_small_objects(coco_root):
    root, _, _ = coco_root
    ds = CocoInstanceDataset(root / "images", root / "ann.json", min_area=10)
    assert ds[1]["ann_ids"] == [4]
    with pytest.raises(ValueError, match="no non-crowd annotation with area >= 1000"):
        CocoInstanceDataset(root / "images", root / "ann.json", min_area=1000)


def test_errors_name_the_file(coco_root):
    root, _, _ = coco_root
    with pytest.raises(FileNotFoundError, match="annotation file not found: .*missing.json"):
        CocoInstanceDataset(root / "images", root / "missing.json")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        CocoInstanceDataset(root / "nowhere", root / "ann.json")
    (root / "images" / "two.jpg").unlink()
    ds = CocoInstanceDataset(root / "images", root / "ann.json")
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*two\.jpg"):
        ds[1]
    (root / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"could not parse COCO annotation file .*bad\.json"):
        CocoInstanceDataset(root / "images", root / "bad.json")


@pytest.mark.parametrize("file_name", ["../outside.jpg", "sub/../../outside.jpg", "ABSOLUTE",
                                       "link/outside.jpg", "", None])
def test_file_names_leaving_the_image_folder_are_refused(coco_root, file_name):
    root, _, _ = coco_root
    write_image_atomic(root / "outside.jpg", np.zeros((24, 32, 3), np.uint8))
    (root / "images" / "link").symlink_to(root)
    if file_name == "ABSOLUTE":
        file_name = str(root / "outside.jpg")
    ann = json.loads((root / "ann.json").read_text())
    ann["images"][1]["file_name"] = file_name
    (root / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(ValueError, match="leaves the image folder|expected a path relative"):
        CocoInstanceDataset(root / "images", root / "ann.json")


def test_a_file_name_in_a_subfolder_is_read(coco_root):
    root, _, _ = coco_root
    (root / "images" / "sub").mkdir()
    (root / "images" / "two.jpg").rename(root / "images" / "sub" / "two.jpg")
    ann = json.loads((root / "ann.json").read_text())
    ann["images"][1]["file_name"] = "sub/two.jpg"
    (root / "ann.json").write_text(json.dumps(ann))
    assert CocoInstanceDataset(root / "images", root / "ann.json")[1]["name"] == "two"
