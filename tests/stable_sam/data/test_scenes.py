"""The reproduction's generated scenes: seeded, non-empty targets, and really ambiguous (the
target touches or overlaps other objects, and some targets are occluded)."""
import cv2
import numpy as np
import pytest

from stable_sam.data.hqseg import HQSegDataset
from stable_sam.data.scenes import TEST_SEED, TRAIN_SEED, VAL_SEED, make_scene, write_scenes

SCENES = 40


@pytest.fixture(scope="module")
def train_scenes():
    return [make_scene(TRAIN_SEED, i) for i in range(SCENES)]


@pytest.mark.parametrize("seed", [TRAIN_SEED, TEST_SEED])
def test_same_seed_same_scene_other_seed_other_scene(seed):
    a, b = make_scene(seed, 3), make_scene(seed, 3)
    assert np.array_equal(a.image, b.image) and a.target == b.target
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    other = make_scene(TRAIN_SEED + TEST_SEED - seed, 3)
    assert not np.array_equal(a.image, other.image)


def test_recipe_choices_never_saw_the_held_out_split():
    # the base recipe was chosen on VAL_SEED's scenes: were it the test seed, the held-out table
    # would have been tuned on
    assert len({TRAIN_SEED, TEST_SEED, VAL_SEED}) == 3
    images = [make_scene(seed, 0).image for seed in (TRAIN_SEED, TEST_SEED, VAL_SEED)]
    assert not any(np.array_equal(images[i], images[j]) for i, j in ((0, 1), (0, 2), (1, 2)))


def test_visible_masks_are_disjoint_and_targets_non_empty(train_scenes):
    for scene in train_scenes:
        assert scene.masks[scene.target].sum() >= 100
        stack = np.stack(scene.masks).astype(int)
        assert stack.sum(0).max() <= 1  # each pixel belongs to at most one visible object


def _touching_others(scene) -> bool:
    grown = cv2.dilate(scene.masks[scene.target].astype(np.uint8), np.ones((5, 5), np.uint8))
    return any((grown.astype(bool) & m).any()
               for i, m in enumerate(scene.masks) if i != scene.target)


def test_targets_touch_other_objects_and_some_are_occluded(train_scenes):
    touching = np.mean([_touching_others(s) for s in train_scenes])
    assert touching >= 0.9, f"only {touching:.0%} of targets touch another object"
    # Occluded: an object drawn after the target (in front) took some of its pixels.
    occluded = np.mean([s.target < len(s.masks) - 1 for s in train_scenes])
    assert occluded >= 0.3, f"only {occluded:.0%} of targets are occluded"


def test_gt_box_holds_other_objects(train_scenes):
    # What makes a loose box ambiguous: the target's own box already holds other objects.
    shares = []
    for s in train_scenes:
        ys, xs = np.nonzero(s.masks[s.target])
        box = np.zeros_like(s.masks[s.target])
        box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        others = np.any([m for i, m in enumerate(s.masks) if i != s.target], axis=0)
        shares.append((box & others).sum() / box.sum())
    assert np.median(shares) >= 0.1


def test_write_scenes_hqseg_layout(tmp_path):
    write_scenes(tmp_path, 3, TEST_SEED, size=128)
    dataset = HQSegDataset(tmp_path)
    assert len(dataset) == 3
    sample = dataset[1]
    scene = make_scene(TEST_SEED, 1, size=128)
    assert sample["image"].shape == (128, 128, 3)
    assert np.array_equal(sample["mask"], scene.masks[scene.target])
    with pytest.raises(ValueError):
        write_scenes(tmp_path, 0, TEST_SEED)
