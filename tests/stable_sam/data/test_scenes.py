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
    from stable_sam.data.scenes import FRESH_TEST_SEED

    assert len({TRAIN_SEED, TEST_SEED, VAL_SEED, FRESH_TEST_SEED}) == 4
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


# Version 2 (issue 24): targets anywhere, similar-size neighbours touching on different sides,
# occluders that leave most of the target visible, part/whole pairs, every object a target.
from stable_sam.data.scenes import MIN_TARGET_AREA, MIN_VISIBLE_V2, SceneTargets, scene_targets

V2_SCENES = 60


@pytest.fixture(scope="module")
def v2_scenes():
    return [make_scene(VAL_SEED, i, version=2) for i in range(V2_SCENES)]


def test_version_2_is_seeded_and_version_1_is_unchanged():
    a, b = make_scene(TRAIN_SEED, 5, version=2), make_scene(TRAIN_SEED, 5, version=2)
    assert np.array_equal(a.image, b.image) and a.groups == b.groups
    assert not np.array_equal(a.image, make_scene(TRAIN_SEED, 5).image)
    assert make_scene(TRAIN_SEED, 5).groups == ()
    with pytest.raises(ValueError, match="version must be one of"):
        make_scene(TRAIN_SEED, 5, version=4)  # was 3, which version 3 made valid


def test_version_2_targets_lie_anywhere(v2_scenes):
    centres = np.array([np.argwhere(s.masks[s.target]).mean(0) for s in v2_scenes]) / 256
    off_centre = np.abs(centres - 0.5).max(1)
    assert np.mean(off_centre > 0.2) >= 0.3  # version 1 keeps every target within 0.15


def _sides_touched(scene) -> int:
    target = scene.masks[scene.target]
    grown = cv2.dilate(target.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    centre = np.argwhere(target).mean(0)
    sides = set()
    for i, m in enumerate(scene.masks):
        if i != scene.target and m.sum() >= 0.5 * target.sum() and (grown & m).any():
            dy, dx = np.argwhere(grown & m).mean(0) - centre
            sides.add(int((np.degrees(np.arctan2(dy, dx)) + 360 + 45) // 90) % 4)
    return len(sides)


def test_version_2_neighbours_of_similar_size_touch_on_different_sides(v2_scenes):
    assert np.mean([_sides_touched(s) >= 2 for s in v2_scenes]) >= 0.5


def test_version_2_occluders_leave_most_of_every_object(v2_scenes):
    occluded = 0
    for scene in v2_scenes:
        assert scene.masks[scene.target].sum() >= MIN_TARGET_AREA
        stack = np.stack(scene.masks).astype(int)
        assert stack.sum(0).max() <= 1
        # the last object is the occluder when one was drawn: it sits over the target
        last = scene.masks[-1]
        grown = cv2.dilate(last.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if len(scene.masks) - 1 != scene.target and (grown & scene.masks[scene.target]).any() \
                and not any(len(scene.masks) - 1 == part for _, part in scene.groups):
            occluded += 1
    assert occluded >= 0.3 * len(v2_scenes)
    assert 0 < MIN_VISIBLE_V2 < 1


def test_version_2_has_part_whole_pairs_and_every_object_is_a_target(v2_scenes):
    pairs = [(s, g) for s in v2_scenes for g in s.groups]
    assert len(pairs) >= 5
    for scene, (whole, part) in pairs:
        targets = scene_targets(scene)
        union = scene.masks[whole] | scene.masks[part]
        assert any(np.array_equal(t, union) for t in targets)
        assert any(np.array_equal(t, scene.masks[part]) for t in targets)
    counts = [len(scene_targets(s)) for s in v2_scenes]
    assert np.mean(counts) >= 3.5  # 200 test targets from about 50 scenes
    assert all(t.sum() >= MIN_TARGET_AREA for s in v2_scenes for t in scene_targets(s))


def test_scene_targets_dataset():
    dataset = SceneTargets(VAL_SEED, 3, version=2)
    item = dataset[2]
    scene = make_scene(VAL_SEED, 2, version=2)
    assert len(dataset) == 3 and item["name"] == f"scenes_{VAL_SEED}_v2_00002"
    assert len(item["masks"]) == len(scene_targets(scene))
    assert np.array_equal(item["objects"], np.any(scene.masks, axis=0))
    with pytest.raises(ValueError, match="count must be >= 1"):
        SceneTargets(VAL_SEED, 0, version=2)


def test_write_scenes_every_target(tmp_path):
    write_scenes(tmp_path, 2, VAL_SEED, version=2, every_target=True)
    dataset = HQSegDataset(tmp_path)
    scenes = [make_scene(VAL_SEED, i, version=2) for i in range(2)]
    targets = [t for s in scenes for t in scene_targets(s)]
    assert len(dataset) == len(targets)
    assert all(np.array_equal(dataset[i]["mask"], t) for i, t in enumerate(targets))
    assert dataset[1]["name"] == f"scene_{VAL_SEED}_00000_t01"


# Version 3 (issue 31 item 3): the target's touching neighbours share its colour family and
# texture, more of them pack around it, and the background is of the same family, so a loose
# box takes in other objects that look like the target.
from stable_sam.data.prompts import make_prompt
from stable_sam.evaluation.prompts import NOISY_BOX_EVAL_IOU_RANGE

V3_SCENES = 30


@pytest.fixture(scope="module")
def v3_scenes():
    return [make_scene(VAL_SEED, i, version=3) for i in range(V3_SCENES)]


def test_version_3_is_seeded_and_other_versions_are_unchanged():
    a, b = make_scene(TRAIN_SEED, 5, version=3), make_scene(TRAIN_SEED, 5, version=3)
    assert np.array_equal(a.image, b.image) and a.groups == b.groups and a.target == b.target
    assert len(a.masks) == len(b.masks)
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    assert not np.array_equal(a.image, make_scene(TRAIN_SEED, 6, version=3).image)
    assert not np.array_equal(a.image, make_scene(TEST_SEED, 5, version=3).image)
    assert not np.array_equal(a.image, make_scene(TRAIN_SEED, 5, version=2).image)


def test_version_3_targets_are_visible_and_every_object_is_a_target(v3_scenes):
    for scene in v3_scenes:
        assert scene.masks[scene.target].sum() >= MIN_TARGET_AREA
        assert np.stack(scene.masks).astype(int).sum(0).max() <= 1
        targets = scene_targets(scene)
        assert all(t.sum() >= MIN_TARGET_AREA for t in targets)
        for whole, part in scene.groups:
            assert any(np.array_equal(t, scene.masks[whole] | scene.masks[part]) for t in targets)
    assert sum(len(s.groups) for s in v3_scenes) >= 3  # about 1 in 10 scenes, as in version 2
    assert np.mean([len(scene_targets(s)) for s in v3_scenes]) >= 4


def _noisy_box_other_share(scenes) -> float:
    # the share of an evaluation noisy box's area that other objects cover, over every target
    rng = np.random.default_rng(0)
    shares = []
    for scene in scenes:
        objects = np.any(scene.masks, axis=0)
        for target in scene_targets(scene):
            for _ in range(3):
                box = make_prompt("noisy_box", target, rng, noise_scale=0.4,
                                  iou_range=NOISY_BOX_EVAL_IOU_RANGE).box
                x0, y0 = np.floor(box[:2]).astype(int)
                x1, y1 = np.ceil(box[2:]).astype(int)
                inside = np.zeros_like(target)
                inside[y0:y1 + 1, x0:x1 + 1] = True
                shares.append((inside & objects & ~target).sum() / inside.sum())
    return float(np.mean(shares))


def _neighbour_colour_distances(scenes) -> np.ndarray:
    # distance between an object's mean colour and each touching object's, over every object
    distances = []
    for scene in scenes:
        image = scene.image.astype(np.float32)
        for i, mask in enumerate(scene.masks):
            if mask.sum() < MIN_TARGET_AREA:
                continue
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            for j, other in enumerate(scene.masks):
                if j != i and (grown & other).sum() >= 20:
                    distances.append(np.linalg.norm(image[mask].mean(0) - image[other].mean(0)))
    return np.array(distances)


def test_version_3_loose_box_holds_neighbours_that_look_like_the_target(v2_scenes, v3_scenes):
    v2 = v2_scenes[:V3_SCENES]  # the same seed and indices
    share2, share3 = _noisy_box_other_share(v2), _noisy_box_other_share(v3_scenes)
    assert share3 >= 0.2 and share3 >= 1.6 * share2, (share2, share3)
    colour2, colour3 = _neighbour_colour_distances(v2), _neighbour_colour_distances(v3_scenes)
    assert np.mean(colour3) <= 60 and np.mean(colour3) <= 0.5 * np.mean(colour2), \
        (np.mean(colour2), np.mean(colour3))
    # ... and the object stays recoverable: the edge between two neighbours is still visible
    assert np.mean(colour3 >= 15) >= 0.95, np.mean(colour3 >= 15)
