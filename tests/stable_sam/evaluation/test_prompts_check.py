"""A prompts file is checked against the dataset it is used with: each way a file can silently
change the numbers is refused, naming where."""
import copy
import json

import numpy as np
import pytest

from stable_sam.data import CocoInstanceDataset, HQSegDataset, make_synthetic_dataset
from stable_sam.evaluation import freeze_prompts, load_prompts, save_prompts
from stable_sam.evaluation.prompts_check import PromptsFileError, check_prompts, fingerprinted

KINDS = ["box", "noisy_box", "points3", "coarse_mask"]


@pytest.fixture(scope="module")
def hqseg(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("hq"), num_images=3,
                                  image_size=(40, 56), seed=2)
    return HQSegDataset(root, name="toy")


@pytest.fixture(scope="module")
def frozen(hqseg, tmp_path_factory):
    data = fingerprinted(freeze_prompts, hqseg, KINDS, 2, 0, model_image_size=256)
    path = save_prompts(tmp_path_factory.mktemp("p") / "prompts.json", data)
    return load_prompts(path)


def _check(prompts, dataset, kinds=None):
    check_prompts(prompts, [dataset], kinds, 256, "p.json")


def test_a_freshly_frozen_file_passes(frozen, hqseg):
    _check(frozen, hqseg)
    _check(frozen, hqseg, ["points3"])


def _target(prompts):
    return prompts["toy"]["images"][1]["targets"][0]


@pytest.mark.parametrize("damage, match", [
    (lambda p: _target(p)["prompts"]["box"][0].update(box=[float("nan"), 0, 5, 5]),
     r"image 1 \(synthetic_0001\) target 0 box\[0\] box: holds NaN"),
    (lambda p: _target(p)["prompts"]["noisy_box"][1].update(box=[0, 0, 57, 10]),
     r"noisy_box\[1\]: box .* leaves the 56x40 image"),
    (lambda p: _target(p)["prompts"]["box"][0].update(box=[20, 0, 10, 10]), "is inverted"),
    (lambda p: _target(p)["prompts"]["points3"][0].update(point_labels=[1, 2, 1]),
     r"point labels must be 0 or 1, are \[1.0, 2.0\]"),
    (lambda p: _target(p)["prompts"]["points3"][0].update(point_coords=[[1, 1], [-3, 2], [4, 4]]),
     "a point leaves the 56x40 image"),
    (lambda p: _target(p)["prompts"]["coarse_mask"][0].update(mask_input=[[0.0] * 8] * 8),
     r"mask_input: shape \(8, 8\), expected \(64, 64\)"),
    (lambda p: _target(p).update(target=-1), r"its targets must be 0\.\.0"),
    (lambda p: _target(p).update(target=3), r"its targets must be 0\.\.0"),
    (lambda p: _target(p)["prompts"].pop("points3"), "holds kinds .* expected"),
    (lambda p: _target(p)["prompts"]["noisy_box"].pop(), r"noisy_box: expected 2 prompt\(s\)"),
    (lambda p: _target(p)["prompts"]["box"][0].update(kind="noisy_box"),
     "expected a 'box' prompt, found 'noisy_box'"),
    (lambda p: _target(p).pop("mask_sha256"), "no mask fingerprint"),
    (lambda p: p["toy"]["images"][2].update(name="synthetic_0009"),
     "image 2: is 'synthetic_0009', the dataset has 'synthetic_0002'"),
    (lambda p: p["toy"]["images"].pop(), "covers 2 images, the dataset has 3"),
    (lambda p: p["toy"].update(kinds=["box", "scribble"]), "unknown prompt kind 'scribble'"),
    (lambda p: p.update(toy=[]), "not a frozen prompt set"),
])
def test_each_damage_is_refused(frozen, hqseg, damage, match):
    prompts = copy.deepcopy(frozen)
    damage(prompts)
    with pytest.raises(PromptsFileError, match=match):
        _check(prompts, hqseg)


def test_kinds_that_were_not_frozen_are_refused(frozen, hqseg):
    with pytest.raises(PromptsFileError, match=r"kinds \['points1'\] were not frozen"):
        _check(frozen, hqseg, ["box", "points1"])


def test_prompts_frozen_for_other_masks_under_the_same_names(frozen, hqseg, tmp_path):
    other = make_synthetic_dataset(tmp_path / "other", num_images=3, image_size=(40, 56), seed=9)
    impostor = HQSegDataset(other, name="toy")
    assert [impostor[i]["name"] for i in range(3)] == [hqseg[i]["name"] for i in range(3)]
    with pytest.raises(PromptsFileError, match="frozen for another mask than the dataset's"):
        _check(frozen, impostor)


def test_coco_annotation_ids_must_match(tmp_path):
    root = make_synthetic_dataset(tmp_path / "coco", num_images=2, image_size=(40, 56), seed=1,
                                  layout="coco")
    dataset = CocoInstanceDataset(root / "images", root / "annotations.json", name="c")
    prompts = {"c": fingerprinted(freeze_prompts, dataset, ["box"], 1, 0)}
    check_prompts(json.loads(json.dumps(prompts)), [dataset], None, 1024, "p.json")
    prompts["c"]["images"][0]["targets"][0]["ann_id"] += 1000
    with pytest.raises(PromptsFileError, match="annotation id"):
        check_prompts(prompts, [dataset], None, 1024, "p.json")


def test_fingerprints_do_not_change_what_is_frozen(hqseg):
    plain = freeze_prompts(hqseg, ["noisy_box"], 2, 0)
    marked = fingerprinted(freeze_prompts, hqseg, ["noisy_box"], 2, 0)
    for image in marked["images"]:
        for target in image["targets"]:
            assert len(target.pop("mask_sha256")) == 64
    assert json.dumps(marked, sort_keys=True) == json.dumps(plain, sort_keys=True)
    assert np.isfinite(plain["images"][0]["targets"][0]["prompts"]["noisy_box"][0]["box"]).all()
