"""Prompt-following: cross-object agreement, stable-but-wrong, a box on empty background; and
evaluate_masks / evaluate_background_boxes with a prompt-blind and a prompt-following model."""
import math

import numpy as np
import pytest

from stable_sam.evaluation.follow import (background_box, cross_agreement, disjoint_pairs,
                                          object_share, stable_but_wrong)
from stable_sam.evaluation.prompts import freeze_prompts
from stable_sam.evaluation.protocol import evaluate_background_boxes, evaluate_masks


def _rect(y0, y1, x0, x1, size=64):
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_stable_but_wrong_counts_only_stable_wrong_targets():
    records = [{"iou": 0.1, "sf": 0.9}, {"iou": 0.1, "sf": 0.5}, {"iou": 0.8, "sf": 0.9},
               {"iou": 0.29, "sf": 0.7}, {"iou": 0.0, "sf": float("nan")}]
    assert stable_but_wrong(records) == pytest.approx(2 / 4)  # the NaN one is left out
    assert math.isnan(stable_but_wrong([{"iou": 0.0, "sf": float("nan")}]))


def test_cross_agreement_is_high_for_a_blind_model_and_low_for_a_following_one():
    gts = [_rect(0, 20, 0, 20), _rect(30, 50, 30, 50), _rect(0, 20, 40, 60)]
    following = [np.stack([g, g]) for g in gts]
    assert cross_agreement(following, gts) == 0.0
    blind = [np.stack([gts[0], gts[0]])] * 3
    assert cross_agreement(blind, gts) == 1.0
    half = [np.stack([gts[0]]), np.stack([gts[0] | gts[1]])]
    assert cross_agreement(half, gts[:2]) == pytest.approx(0.5)


def test_a_part_and_its_whole_are_not_a_pair():
    whole, part, other = _rect(0, 30, 0, 30), _rect(0, 10, 0, 10), _rect(40, 60, 40, 60)
    assert disjoint_pairs([whole, part, other]) == [(0, 2), (1, 2)]
    assert math.isnan(cross_agreement([np.stack([whole])] * 2, [whole, part]))


def test_background_box_holds_no_object():
    objects = _rect(0, 64, 0, 40) | _rect(50, 64, 40, 64)
    for seed in range(20):
        box = background_box(objects, np.random.default_rng(seed), sides=(0.1, 0.2))
        x0, y0, x1, y1 = box.astype(int)
        assert x1 - x0 == y1 - y0 >= 5
        assert not objects[y0:y1 + 1, x0:x1 + 1].any()
        assert objects.shape[1] > x1 and objects.shape[0] > y1 and x0 >= 40
    assert background_box(np.ones((64, 64), bool), np.random.default_rng(0)) is None


def test_object_share():
    objects = _rect(0, 10, 0, 10)
    assert object_share(_rect(0, 10, 0, 20), objects) == 0.5
    assert object_share(np.zeros((64, 64), bool), objects) == 0.0


class TwoObjects:
    name = "two_objects"

    def __len__(self):
        return 2

    def __getitem__(self, index):
        masks = [_rect(4, 20, 4, 24), _rect(30, 50, 30, 56)]
        return {"image": np.zeros((64, 64, 3), np.uint8), "masks": masks,
                "name": f"img{index}"}


class BoxPredictor:
    """Fills its box prompt (`blind`: always the first object, whatever the prompt)."""

    class model:
        mask_threshold = 0.0

    def __init__(self, blind):
        self.blind = blind

    def set_image(self, image):
        self.shape = image.shape[:2]

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=False, return_logits=False):
        mask = _rect(4, 20, 4, 24) if self.blind or box is None else np.zeros(self.shape, bool)
        if box is not None and not self.blind:
            x0, y0, x1, y1 = np.round(box).astype(int)
            mask[y0:y1 + 1, x0:x1 + 1] = True
        return np.where(mask, 1.0, -1.0)[None], np.array([1.0]), None


@pytest.mark.parametrize("blind, agreement, wrong, on_objects", [
    (True, 1.0, 0.5, 1.0), (False, 0.0, 0.0, 0.0)])
def test_evaluate_reports_prompt_following(blind, agreement, wrong, on_objects):
    dataset = TwoObjects()
    prompts = freeze_prompts(dataset, ["box", "noisy_box"], 3, noise_scale=0.05)
    results = evaluate_masks(BoxPredictor(blind), dataset, prompts, follow=True)
    follow = results["follow"]
    assert follow["box"]["cross_agreement"] == agreement
    assert math.isnan(follow["box"]["stable_but_wrong"])  # one GT box: no stability
    assert follow["noisy_box"]["stable_but_wrong"] == wrong
    assert [r["image"] for r in results["cross_records"] if r["kind"] == "box"] == [0, 1]
    background = evaluate_background_boxes(BoxPredictor(blind), dataset)
    assert background["count"] == 2 and background["object_share"] == on_objects
    assert "follow" not in evaluate_masks(BoxPredictor(blind), dataset, prompts)
